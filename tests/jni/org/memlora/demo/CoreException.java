package org.memlora.demo;

/** What android_demo's CoreException is: the core's one-line message. */
public final class CoreException extends RuntimeException {
    public CoreException(String message) {
        super(message);
    }
}

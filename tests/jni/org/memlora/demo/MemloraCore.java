package org.memlora.demo;

/**
 * The natives android_demo's MemloraCore.kt declares, in Java so the JDK alone can load the JNI shim
 * (build/core/libmemlora_jni.so) on Linux: tests/test_core_api.py runs main() on a bundle.
 */
public final class MemloraCore {
    static native String nativeVersion();
    static native long nativeOpen(String dir, boolean verify);
    static native void nativeClose(long handle);
    static native String nativeInfo(long handle);
    static native String nativeSelftest(long handle);
    static native void nativeTraceTo(long handle, String path);
    static native String nativeGenerate(long handle, String request);
    static native String nativeIngest(long handle, String request);
    static native String nativeAsk(long handle, String request);
    static native String nativeMemories(long handle, String request);

    /** args: the shim's path, a bundle, a tampered bundle; prints one result or error per line. */
    public static void main(String[] args) {
        System.load(args[0]);
        System.out.println(nativeVersion());
        long core = nativeOpen(args[1], true);
        System.out.println(nativeSelftest(core));
        try {
            nativeAsk(core, "{\"store\": \"s.sqlite\", \"question\": \"?\"}");
        } catch (CoreException e) {
            System.out.println("error: " + e.getMessage());
        }
        try {
            nativeOpen(args[2], true);
        } catch (CoreException e) {
            System.out.println("error: " + e.getMessage());
        }
        nativeClose(core);
    }
}

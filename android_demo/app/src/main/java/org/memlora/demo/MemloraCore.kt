package org.memlora.demo

import org.json.JSONObject

/** A failed core call: the core's one-line message (the file and the problem), shown as it is. */
class CoreException(message: String) : RuntimeException(message)

/**
 * One opened bundle in the on-device core (device_core/api/memlora_core.h through memlora_jni.cpp). Requests and
 * results are the C API's JSON; this class only converts them. One call at a time: the UI runs them on one
 * background dispatcher.
 */
class MemloraCore private constructor(private var handle: Long) : AutoCloseable {
    val info: JSONObject get() = JSONObject(nativeInfo(handle))

    fun selftest(): JSONObject = JSONObject(nativeSelftest(handle))

    /** Every later generation appends its trace record to [path] (null stops). */
    fun traceTo(path: String?) = nativeTraceTo(handle, path)

    fun generate(request: JSONObject): JSONObject = JSONObject(nativeGenerate(handle, request.toString()))
    fun ingest(request: JSONObject): JSONObject = JSONObject(nativeIngest(handle, request.toString()))
    fun ask(request: JSONObject): JSONObject = JSONObject(nativeAsk(handle, request.toString()))
    fun memories(request: JSONObject): JSONObject = JSONObject(nativeMemories(handle, request.toString()))

    override fun close() {
        if (handle != 0L) nativeClose(handle)
        handle = 0L
    }

    companion object {
        init {
            System.loadLibrary("memlora_jni")
        }

        /** Opens the bundle directory [dir]; [verify] checks every file's sha256 (once, after copying it in). */
        fun open(dir: String, verify: Boolean): MemloraCore = MemloraCore(nativeOpen(dir, verify))

        val version: JSONObject get() = JSONObject(nativeVersion())

        @JvmStatic private external fun nativeVersion(): String
        @JvmStatic private external fun nativeOpen(dir: String, verify: Boolean): Long
        @JvmStatic private external fun nativeClose(handle: Long)
        @JvmStatic private external fun nativeInfo(handle: Long): String
        @JvmStatic private external fun nativeSelftest(handle: Long): String
        @JvmStatic private external fun nativeTraceTo(handle: Long, path: String?)
        @JvmStatic private external fun nativeGenerate(handle: Long, request: String): String
        @JvmStatic private external fun nativeIngest(handle: Long, request: String): String
        @JvmStatic private external fun nativeAsk(handle: Long, request: String): String
        @JvmStatic private external fun nativeMemories(handle: Long, request: String): String
    }
}

// JNI shim of org.memlora.demo.MemloraCore over the core's C API (device_core/api/memlora_core.h) and nothing
// else: strings cross as UTF-8 JSON, a failed call throws org.memlora.demo.CoreException with the core's
// one-line message. The handle is the C API's pointer held in a Kotlin Long.
#include <jni.h>

#include <string>

#include "memlora_core.h"

namespace {

using RequestCall = char* (*)(memlora_core*, const char*, char**);
using PlainCall = char* (*)(memlora_core*, char**);

std::string utf8(JNIEnv* env, jstring text) {
  if (text == nullptr) return "";
  const char* chars = env->GetStringUTFChars(text, nullptr);
  std::string out(chars);
  env->ReleaseStringUTFChars(text, chars);
  return out;
}

void raise(JNIEnv* env, char* error) {
  jclass type = env->FindClass("org/memlora/demo/CoreException");
  env->ThrowNew(type, error != nullptr ? error : "memlora_core: failed without a message");
  memlora_core_free(error);
}

// The result as a Java string (and the core's copy freed), or null with CoreException pending.
jstring result(JNIEnv* env, char* out, char* error) {
  if (out == nullptr) {
    raise(env, error);
    return nullptr;
  }
  jstring text = env->NewStringUTF(out);
  memlora_core_free(out);
  return text;
}

memlora_core* core(jlong handle) { return reinterpret_cast<memlora_core*>(handle); }

jstring plain(JNIEnv* env, jlong handle, PlainCall call) {
  char* error = nullptr;
  char* out = call(core(handle), &error);
  return result(env, out, error);
}

jstring with_request(JNIEnv* env, jlong handle, jstring request, RequestCall call) {
  char* error = nullptr;
  char* out = call(core(handle), utf8(env, request).c_str(), &error);
  return result(env, out, error);
}

}  // namespace

extern "C" {

JNIEXPORT jstring JNICALL Java_org_memlora_demo_MemloraCore_nativeVersion(JNIEnv* env, jclass) {
  return result(env, memlora_core_version(), nullptr);
}

JNIEXPORT jlong JNICALL Java_org_memlora_demo_MemloraCore_nativeOpen(JNIEnv* env, jclass, jstring dir, jboolean verify) {
  char* error = nullptr;
  memlora_core* opened = memlora_core_open(utf8(env, dir).c_str(), verify ? 1 : 0, &error);
  if (opened == nullptr) raise(env, error);
  return reinterpret_cast<jlong>(opened);
}

JNIEXPORT void JNICALL Java_org_memlora_demo_MemloraCore_nativeClose(JNIEnv*, jclass, jlong handle) {
  memlora_core_close(core(handle));
}

JNIEXPORT jstring JNICALL Java_org_memlora_demo_MemloraCore_nativeInfo(JNIEnv* env, jclass, jlong handle) {
  return plain(env, handle, memlora_core_info);
}

JNIEXPORT jstring JNICALL Java_org_memlora_demo_MemloraCore_nativeSelftest(JNIEnv* env, jclass, jlong handle) {
  return plain(env, handle, memlora_core_selftest);
}

JNIEXPORT void JNICALL Java_org_memlora_demo_MemloraCore_nativeTraceTo(JNIEnv* env, jclass, jlong handle, jstring path) {
  char* error = nullptr;
  if (memlora_core_trace_to(core(handle), path == nullptr ? nullptr : utf8(env, path).c_str(), &error) != 0) raise(env, error);
}

JNIEXPORT jstring JNICALL Java_org_memlora_demo_MemloraCore_nativeGenerate(JNIEnv* env, jclass, jlong handle, jstring request) {
  return with_request(env, handle, request, memlora_core_generate);
}

JNIEXPORT jstring JNICALL Java_org_memlora_demo_MemloraCore_nativeIngest(JNIEnv* env, jclass, jlong handle, jstring request) {
  return with_request(env, handle, request, memlora_core_ingest);
}

JNIEXPORT jstring JNICALL Java_org_memlora_demo_MemloraCore_nativeAsk(JNIEnv* env, jclass, jlong handle, jstring request) {
  return with_request(env, handle, request, memlora_core_ask);
}

JNIEXPORT jstring JNICALL Java_org_memlora_demo_MemloraCore_nativeMemories(JNIEnv* env, jclass, jlong handle, jstring request) {
  return with_request(env, handle, request, memlora_core_memories);
}

}  // extern "C"

#import "MemloraBridge.h"

#include "memlora_core.h"

static NSString* const MemloraErrorDomain = @"org.memlora.core";

// The core's message as an NSError (and its copy freed).
static void fail(char* message, NSError** error) {
  if (error != nil) {
    NSString* text = message != nullptr ? @(message) : @"memlora_core: failed without a message";
    *error = [NSError errorWithDomain:MemloraErrorDomain code:1 userInfo:@{NSLocalizedDescriptionKey : text}];
  }
  memlora_core_free(message);
}

static NSString* _Nullable take(char* out, char* message, NSError** error) {
  if (out == nullptr) {
    fail(message, error);
    return nil;
  }
  NSString* text = @(out);
  memlora_core_free(out);
  return text;
}

// memlora_forward_fn over the Swift block passed as `context`.
static int forward_trampoline(void* context, const int32_t* tokens, int32_t count, int32_t start, const char* adapter,
                              float* logits, int32_t vocab, char* message, int32_t message_size) {
  @autoreleasepool {
    MemloraForward forward = (__bridge MemloraForward)context;
    NSString* failure = nil;
    NSData* out = forward([NSData dataWithBytes:tokens length:sizeof(int32_t) * count], start,
                          adapter != nullptr ? @(adapter) : nil, &failure);
    if (out == nil || out.length != sizeof(float) * vocab) {
      NSString* why = failure ?: [NSString stringWithFormat:@"returned %lu bytes of logits for a vocabulary of %d",
                                                            (unsigned long)out.length, vocab];
      snprintf(message, message_size, "%s", why.UTF8String);
      return 1;
    }
    memcpy(logits, out.bytes, out.length);
    return 0;
  }
}

@implementation MemloraBridge {
  memlora_core* _core;
  MemloraForward _forward;  // held for as long as the core may call it
}

+ (NSString*)version {
  return take(memlora_core_version(), nullptr, nil);
}

- (instancetype)initWithBundle:(NSString*)path verify:(BOOL)verify error:(NSError**)error {
  if ((self = [super init])) {
    char* message = nullptr;
    _core = memlora_core_open(path.fileSystemRepresentation, verify ? 1 : 0, &message);
    if (_core == nullptr) {
      fail(message, error);
      return nil;
    }
  }
  return self;
}

- (instancetype)initWithBundle:(NSString*)path
                        verify:(BOOL)verify
                        target:(NSString*)target
                       forward:(MemloraForward)forward
                         error:(NSError**)error {
  if ((self = [super init])) {
    _forward = [forward copy];
    char* message = nullptr;
    _core = memlora_core_open_with(path.fileSystemRepresentation, verify ? 1 : 0, target.UTF8String, forward_trampoline,
                                   nullptr, (__bridge void*)_forward, &message);
    if (_core == nullptr) {
      fail(message, error);
      return nil;
    }
  }
  return self;
}

- (void)dealloc {
  memlora_core_close(_core);
}

- (NSString*)info:(NSError**)error {
  char* message = nullptr;
  char* out = memlora_core_info(_core, &message);
  return take(out, message, error);
}

- (NSString*)selftest:(NSError**)error {
  char* message = nullptr;
  char* out = memlora_core_selftest(_core, &message);
  return take(out, message, error);
}

- (BOOL)traceTo:(NSString*)path error:(NSError**)error {
  char* message = nullptr;
  if (memlora_core_trace_to(_core, path != nil ? path.fileSystemRepresentation : nullptr, &message) == 0) return YES;
  fail(message, error);
  return NO;
}

- (NSString*)call:(char* (*)(memlora_core*, const char*, char**))function request:(NSString*)request error:(NSError**)error {
  char* message = nullptr;
  char* out = function(_core, request.UTF8String, &message);
  return take(out, message, error);
}

- (NSString*)generate:(NSString*)request error:(NSError**)error {
  return [self call:memlora_core_generate request:request error:error];
}

- (NSString*)ingest:(NSString*)request error:(NSError**)error {
  return [self call:memlora_core_ingest request:request error:error];
}

- (NSString*)ask:(NSString*)request error:(NSError**)error {
  return [self call:memlora_core_ask request:request error:error];
}

- (NSString*)memories:(NSString*)request error:(NSError**)error {
  return [self call:memlora_core_memories request:request error:error];
}

@end

// Objective-C face of the core's C API (device_core/api/memlora_core.h) for Swift: JSON strings in and out, a
// failed call returns nil and sets NSError whose localizedDescription is the core's one-line message.
#import <Foundation/Foundation.h>

NS_ASSUME_NONNULL_BEGIN

/// The app's forward pass (CoreMLForward): int32 `tokens` at positions start ..< start + count with `adapter`
/// active (nil: base) -> the last position's logits as float32 data, or nil with `failure` set.
typedef NSData* _Nullable (^MemloraForward)(NSData* tokens, NSInteger start, NSString* _Nullable adapter,
                                            NSString* _Nullable* _Nonnull failure);

@interface MemloraBridge : NSObject

+ (NSString*)version;

/// Opens the bundle directory; `verify` checks every file's sha256 (once, after importing it).
- (nullable instancetype)initWithBundle:(NSString*)path verify:(BOOL)verify error:(NSError**)error;

/// Opens it with the app's forward pass of `target` (memlora_core_open_with; retrieval on the bundle's
/// ExecuTorch embedder in the core, so the bundle is exported with `--target coreml,executorch`).
- (nullable instancetype)initWithBundle:(NSString*)path
                                 verify:(BOOL)verify
                                 target:(NSString*)target
                                forward:(MemloraForward)forward
                                  error:(NSError**)error;

- (nullable NSString*)info:(NSError**)error;
- (nullable NSString*)selftest:(NSError**)error;
/// Every later generation appends its trace record to `path` (nil stops).
- (BOOL)traceTo:(nullable NSString*)path error:(NSError**)error NS_SWIFT_NAME(trace(to:));
- (nullable NSString*)generate:(NSString*)request error:(NSError**)error;
- (nullable NSString*)ingest:(NSString*)request error:(NSError**)error;
- (nullable NSString*)ask:(NSString*)request error:(NSError**)error;
- (nullable NSString*)memories:(NSString*)request error:(NSError**)error;

@end

NS_ASSUME_NONNULL_END

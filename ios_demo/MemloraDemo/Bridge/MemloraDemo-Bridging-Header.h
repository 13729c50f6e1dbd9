// Swift sees the core only through the Objective-C++ bridge.
#import "MemloraBridge.h"

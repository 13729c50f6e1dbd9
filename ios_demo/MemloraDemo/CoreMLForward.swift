import CoreML
import Foundation

/// The Core ML forward pass of a bundle's `coreml` target: the stateful multifunction .mlpackage (one function
/// per adapter, `base` without one), with export/coreml_export.py's interface --
///   inputs  input_ids [1, T] int32, causal_mask [1, 1, T, S] fp16 (0 attend, -inf masked; S = start + T)
///   state   the KV cache of every layer, written at rows S - T ..< S
///   output  logits [1, T, vocab] fp16
/// It is the only part of the pipeline Swift computes: tokenizing, prompts, the decode loop, parsing, the store
/// and traces stay in the core, which calls `forward` through the C API's forward callback
/// (`memlora_core_open_with`, DemoState.openCoreML).
final class CoreMLForward {
    private let package: URL
    private var models: [String: MLModel] = [:]
    private var state: MLState?
    private var stateFunction: String?

    /// `compiled`: the .mlmodelc compiled on the device from the bundle's package (`MLModel.compileModel(at:)`).
    init(compiled: URL) { package = compiled }

    /// The function's model, loaded once (its weights shared with the other functions by the package).
    private func model(_ function: String) throws -> MLModel {
        if let loaded = models[function] { return loaded }
        let config = MLModelConfiguration()
        config.functionName = function
        config.computeUnits = .cpuAndNeuralEngine
        let loaded = try MLModel(contentsOf: package, configuration: config)
        models[function] = loaded
        return loaded
    }

    /// Last-position logits of `tokens` at positions start ..< start + tokens.count with `adapter` active
    /// (nil: base). A call at start 0, or with another adapter, begins a fresh state -- the Backend contract
    /// the core checks before it calls.
    func forward(tokens: [Int32], start: Int, adapter: String?) throws -> [Float] {
        let function = adapter ?? "base"
        let m = try model(function)
        if start == 0 || stateFunction != function {
            state = m.makeState()
            stateFunction = function
        }
        let count = tokens.count, total = start + count
        let ids = try MLMultiArray(shape: [1, NSNumber(value: count)], dataType: .int32)
        for (i, t) in tokens.enumerated() { ids[i] = NSNumber(value: t) }
        let mask = try MLMultiArray(shape: [1, 1, NSNumber(value: count), NSNumber(value: total)], dataType: .float16)
        for q in 0..<count {
            for k in 0..<total { mask[q * total + k] = NSNumber(value: k <= start + q ? 0 : -Float.infinity) }
        }
        let inputs = try MLDictionaryFeatureProvider(dictionary: ["input_ids": ids, "causal_mask": mask])
        let out = try m.prediction(from: inputs, using: state!)
        let logits = out.featureValue(for: "logits")!.multiArrayValue!
        let vocab = logits.shape[2].intValue, last = (count - 1) * vocab
        return (0..<vocab).map { logits[last + $0].floatValue }
    }
}

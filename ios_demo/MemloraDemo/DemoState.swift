import CoreML
import Foundation

/// The open bundle, its store and trace files, and the last result or error line the screens show. Core calls
/// run one at a time on a serial queue; a failed call's message is the core's one line, shown as it is.
@MainActor
final class DemoState: ObservableObject {
    @Published var status = "no bundle open"
    @Published var output = ""
    @Published private(set) var core: MemloraBridge?
    /// Decode with the bundle's Core ML package (CoreMLForward through the core's forward callback) instead of
    /// its ExecuTorch programs; retrieval stays on the core's ExecuTorch embedder either way.
    @Published var useCoreML = false

    private let queue = DispatchQueue(label: "org.memlora.core")
    private let documents = FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0]
    var store: String { documents.appendingPathComponent("store.sqlite").path }
    /// In Documents, so Finder / Xcode's Devices window can copy it off the phone.
    var trace: URL { documents.appendingPathComponent("traces/device.jsonl") }

    /// Copies the chosen folder into Documents/bundles (the core reads plain paths), then opens and verifies it.
    func importBundle(from folder: URL) {
        status = "copying \(folder.lastPathComponent)…"
        let target = documents.appendingPathComponent("bundles/\(folder.lastPathComponent)")
        let coreML = useCoreML
        queue.async {
            let result: Result<MemloraBridge, Error> = Result {
                let accessing = folder.startAccessingSecurityScopedResource()
                defer { if accessing { folder.stopAccessingSecurityScopedResource() } }
                try? FileManager.default.removeItem(at: target)
                try FileManager.default.createDirectory(at: target.deletingLastPathComponent(), withIntermediateDirectories: true)
                try FileManager.default.copyItem(at: folder, to: target)
                return try coreML ? Self.openCoreML(target) : MemloraBridge(bundle: target.path, verify: true)
            }
            DispatchQueue.main.async { self.opened(result, name: folder.lastPathComponent) }
        }
    }

    /// The bundle with Core ML decoding: its package (manifest targets.coreml.graphs.base) compiled on the device.
    nonisolated private static func openCoreML(_ bundle: URL) throws -> MemloraBridge {
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: bundle.appendingPathComponent("manifest.json")))
        guard let graphs = ((manifest as? [String: Any])?["targets"] as? [String: Any])?["coreml"] as? [String: Any],
              let package = (graphs["graphs"] as? [String: String])?["base"] else {
            throw NSError(domain: "org.memlora.demo", code: 1, userInfo: [NSLocalizedDescriptionKey:
                "\(bundle.appendingPathComponent("manifest.json").path): no coreml target; export with --target coreml,executorch"])
        }
        let model = CoreMLForward(compiled: try MLModel.compileModel(at: bundle.appendingPathComponent(package)))
        return try MemloraBridge(bundle: bundle.path, verify: true, target: "coreml") { tokens, start, adapter, failure in
            do {
                let ids = tokens.withUnsafeBytes { Array($0.bindMemory(to: Int32.self)) }
                let logits = try model.forward(tokens: ids, start: start, adapter: adapter)
                return logits.withUnsafeBufferPointer { Data(buffer: $0) }
            } catch {
                failure.pointee = error.localizedDescription as NSString
                return nil
            }
        }
    }

    private func opened(_ result: Result<MemloraBridge, Error>, name: String) {
        switch result {
        case .success(let bridge):
            try? FileManager.default.createDirectory(at: trace.deletingLastPathComponent(), withIntermediateDirectories: true)
            try? bridge.trace(to: trace.path)
            core = bridge
            output = (try? bridge.info()) ?? ""
            status = "opened \(name)"
        case .failure(let error):
            status = error.localizedDescription
        }
    }

    /// Runs one core call off the main thread; its JSON result goes to `output`, its speed to `status`.
    func run(_ label: String, _ call: @escaping (MemloraBridge) throws -> String) {
        guard let core else { status = "open a bundle first"; return }
        status = "\(label)…"
        queue.async {
            let result = Result { try call(core) }
            DispatchQueue.main.async {
                switch result {
                case .success(let json):
                    self.output = json
                    self.status = "\(label): done" + Self.speed(json)
                case .failure(let error):
                    self.status = error.localizedDescription
                }
            }
        }
    }

    static func request(_ fields: [String: Any]) -> String {
        String(data: try! JSONSerialization.data(withJSONObject: fields), encoding: .utf8)!
    }

    /// "(adapter A, N tok/s)" for a result that reports its speed.
    private static func speed(_ json: String) -> String {
        guard let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
              let tps = object["decode_tokens_per_second"] as? Double else { return "" }
        let adapter = object.keys.contains("adapter") ? "adapter \((object["adapter"] as? String) ?? "base"), " : ""
        return " (\(adapter)\(String(format: "%.1f", tps)) tok/s)"
    }
}

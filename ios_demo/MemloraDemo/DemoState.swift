import Foundation

/// The open bundle, its store and trace files, and the last result or error line the screens show. Core calls
/// run one at a time on a serial queue; a failed call's message is the core's one line, shown as it is.
@MainActor
final class DemoState: ObservableObject {
    @Published var status = "no bundle open"
    @Published var output = ""
    @Published private(set) var core: MemloraBridge?

    private let queue = DispatchQueue(label: "org.memlora.core")
    private let documents = FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0]
    var store: String { documents.appendingPathComponent("store.sqlite").path }
    /// In Documents, so Finder / Xcode's Devices window can copy it off the phone.
    var trace: URL { documents.appendingPathComponent("traces/device.jsonl") }

    /// Copies the chosen folder into Documents/bundles (the core reads plain paths), then opens and verifies it.
    func importBundle(from folder: URL) {
        status = "copying \(folder.lastPathComponent)…"
        let target = documents.appendingPathComponent("bundles/\(folder.lastPathComponent)")
        queue.async {
            let result: Result<MemloraBridge, Error> = Result {
                let accessing = folder.startAccessingSecurityScopedResource()
                defer { if accessing { folder.stopAccessingSecurityScopedResource() } }
                try? FileManager.default.removeItem(at: target)
                try FileManager.default.createDirectory(at: target.deletingLastPathComponent(), withIntermediateDirectories: true)
                try FileManager.default.copyItem(at: folder, to: target)
                return try MemloraBridge(bundle: target.path, verify: true)
            }
            DispatchQueue.main.async { self.opened(result, name: folder.lastPathComponent) }
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

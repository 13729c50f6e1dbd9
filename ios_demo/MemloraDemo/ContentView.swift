import SwiftUI
import UniformTypeIdentifiers

/// The demo's screens; everything but drawing and picking files happens in the core (MemloraBridge).
struct ContentView: View {
    @EnvironmentObject var state: DemoState

    var body: some View {
        VStack(alignment: .leading) {
            TabView {
                BundleScreen().tabItem { Label("Bundle", systemImage: "shippingbox") }
                IngestScreen().tabItem { Label("Ingest", systemImage: "text.bubble") }
                MemoriesScreen().tabItem { Label("Memories", systemImage: "list.bullet") }
                AskScreen().tabItem { Label("Ask", systemImage: "questionmark.bubble") }
                SelftestScreen().tabItem { Label("Self-test", systemImage: "checkmark.seal") }
                TraceScreen().tabItem { Label("Trace", systemImage: "square.and.arrow.up") }
            }
            Text(state.status).font(.headline).padding(.horizontal)
            ScrollView { Text(state.output).font(.system(.caption, design: .monospaced)).textSelection(.enabled) }
                .frame(maxHeight: 240).padding(.horizontal)
        }
    }
}

struct BundleScreen: View {
    @EnvironmentObject var state: DemoState
    @State private var picking = false

    var body: some View {
        Toggle("Decode with Core ML (the bundle's coreml target)", isOn: $state.useCoreML)
        Button("Choose a bundle folder (copied into the app)") { picking = true }
            .fileImporter(isPresented: $picking, allowedContentTypes: [.folder]) { result in
                if case .success(let folder) = result { state.importBundle(from: folder) }
            }
    }
}

struct IngestScreen: View {
    @EnvironmentObject var state: DemoState
    @State private var date = "8 May 2023"
    @State private var turns = "Caroline: I went to a support group yesterday.\nMelanie: How was it?"
    @State private var picking = false

    var body: some View {
        Form {
            TextField("Session date", text: $date)
            TextEditor(text: $turns).frame(minHeight: 120)
            Button("Ingest typed turns") {
                state.run("ingest") { try $0.ingest(DemoState.request(["store": state.store, "turns": typedTurns()])) }
            }
            Button("Ingest a JSONL / LoCoMo file") { picking = true }
        }
        .fileImporter(isPresented: $picking, allowedContentTypes: [.json, .data]) { result in
            guard case .success(let file) = result else { return }
            let copy = FileManager.default.temporaryDirectory.appendingPathComponent(file.lastPathComponent)
            let accessing = file.startAccessingSecurityScopedResource()
            defer { if accessing { file.stopAccessingSecurityScopedResource() } }
            try? FileManager.default.removeItem(at: copy)
            try? FileManager.default.copyItem(at: file, to: copy)
            state.run("ingest") { try $0.ingest(DemoState.request(["store": state.store, "file": copy.path])) }
        }
    }

    /// Typed "Speaker: text" lines as the C API's turns.
    private func typedTurns() -> [[String: String]] {
        turns.split(separator: "\n").filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }.map { line in
            let parts = line.split(separator: ":", maxSplits: 1)
            let speaker = parts.count == 2 ? String(parts[0]).trimmingCharacters(in: .whitespaces) : "User"
            let text = String(parts.last!).trimmingCharacters(in: .whitespaces)
            return ["speaker": speaker, "text": text, "date": date]
        }
    }
}

struct MemoriesScreen: View {
    @EnvironmentObject var state: DemoState
    @State private var history = true

    var body: some View {
        Form {
            Toggle("With history", isOn: $history)
            Button("Show memories") {
                state.run("memories") { try $0.memories(DemoState.request(["store": state.store, "history": history])) }
            }
        }
    }
}

struct AskScreen: View {
    @EnvironmentObject var state: DemoState
    @State private var question = "When did Caroline go to the support group?"

    var body: some View {
        Form {
            TextField("Question", text: $question)
            Button("Ask") { state.run("ask") { try $0.ask(DemoState.request(["store": state.store, "question": question])) } }
        }
    }
}

struct SelftestScreen: View {
    @EnvironmentObject var state: DemoState

    var body: some View {
        Form {
            Text("Replays the bundle's golden traces through the core: every record must be identical.")
            Button("Run self-test") { state.run("self-test") { try $0.selftest() } }
        }
    }
}

struct TraceScreen: View {
    @EnvironmentObject var state: DemoState

    var body: some View {
        Form {
            Text("Every generation is appended to Documents/traces/device.jsonl")
            ShareLink("Share the device trace", item: state.trace)
            Button("Clear the trace") { try? FileManager.default.removeItem(at: state.trace); state.status = "trace cleared" }
        }
    }
}

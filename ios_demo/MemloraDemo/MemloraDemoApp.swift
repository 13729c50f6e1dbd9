import SwiftUI

@main
struct MemloraDemoApp: App {
    @StateObject private var state = DemoState()

    var body: some Scene {
        WindowGroup { ContentView().environmentObject(state) }
    }
}

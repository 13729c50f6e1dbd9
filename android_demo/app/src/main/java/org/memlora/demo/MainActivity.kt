package org.memlora.demo

import android.content.Context
import android.content.Intent
import android.net.Uri
import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.rememberLauncherForActivityResult
import androidx.activity.compose.setContent
import androidx.activity.result.contract.ActivityResultContracts
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.rememberScrollState
import androidx.compose.foundation.verticalScroll
import androidx.compose.material3.Button
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Scaffold
import androidx.compose.material3.Switch
import androidx.compose.material3.Tab
import androidx.compose.material3.TabRow
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableIntStateOf
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.rememberCoroutineScope
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.platform.LocalContext
import androidx.compose.ui.unit.dp
import androidx.core.content.FileProvider
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import org.json.JSONArray
import org.json.JSONObject
import java.io.File
import java.util.concurrent.Executors

/** The demo's screens. Everything but drawing and picking files happens in the core (MemloraCore). */
class MainActivity : ComponentActivity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val state = DemoState(applicationContext)
        setContent { MaterialTheme { DemoApp(state) } }
    }
}

/** The open bundle, its store and trace files, and the last result or error line each screen shows. */
class DemoState(private val context: Context) {
    var core: MemloraCore? by mutableStateOf(null)
    var status by mutableStateOf("no bundle open")
    var output by mutableStateOf("")
    val store: String get() = File(context.filesDir, "store.sqlite").path
    val trace: File get() = File(context.filesDir, "traces/device.jsonl")

    /** Core calls run one at a time off the main thread; a CoreException becomes the status line. */
    private val worker = Executors.newSingleThreadExecutor().asCoroutineDispatcher()

    fun run(scope: CoroutineScope, label: String, call: (MemloraCore) -> JSONObject) {
        val open = core ?: run { status = "open a bundle first"; return }
        status = "$label…"
        scope.launch {
            status = try {
                val result = withContext(worker) { call(open) }
                output = result.toString(2)
                "$label: done" + speed(result)
            } catch (e: CoreException) {
                e.message ?: "$label failed"
            }
        }
    }

    fun open(scope: CoroutineScope, dir: File, verify: Boolean) {
        scope.launch {
            status = try {
                core?.close()
                val opened = withContext(worker) { MemloraCore.open(dir.path, verify) }
                trace.parentFile?.mkdirs()
                opened.traceTo(trace.path)
                core = opened
                output = opened.info.toString(2)
                "opened ${dir.name}"
            } catch (e: CoreException) {
                e.message ?: "cannot open ${dir.name}"
            }
        }
    }

    /** "(adapter A, N tok/s)" for a result that reports its speed. */
    private fun speed(result: JSONObject): String {
        val tps = result.optDouble("decode_tokens_per_second", Double.NaN)
        if (tps.isNaN()) return ""
        val adapter = when {
            !result.has("adapter") -> ""
            result.isNull("adapter") -> "base model, "
            else -> "adapter ${result.getString("adapter")}, "
        }
        return " ($adapter${"%.1f".format(tps)} tok/s)"
    }
}

private val SCREENS = listOf("Bundle", "Ingest", "Memories", "Ask", "Self-test", "Trace")

@Composable
fun DemoApp(state: DemoState) {
    var screen by remember { mutableIntStateOf(0) }
    Scaffold(topBar = {
        TabRow(selectedTabIndex = screen) {
            SCREENS.forEachIndexed { i, title -> Tab(selected = screen == i, onClick = { screen = i }, text = { Text(title) }) }
        }
    }) { padding ->
        Column(Modifier.padding(padding).padding(12.dp).fillMaxSize().verticalScroll(rememberScrollState())) {
            when (screen) {
                0 -> BundleScreen(state)
                1 -> IngestScreen(state)
                2 -> MemoriesScreen(state)
                3 -> AskScreen(state)
                4 -> SelftestScreen(state)
                5 -> TraceScreen(state)
            }
            Text(state.status, style = MaterialTheme.typography.titleSmall, modifier = Modifier.padding(vertical = 8.dp))
            Text(state.output, style = MaterialTheme.typography.bodySmall)
        }
    }
}

@Composable
fun SelftestScreen(state: DemoState) {
    val scope = rememberCoroutineScope()
    Text("Replays the bundle's golden traces through the core: every record must be identical.")
    Button(onClick = { state.run(scope, "self-test") { it.selftest() } }) { Text("Run self-test") }
}

@Composable
fun BundleScreen(state: DemoState) {
    val context = LocalContext.current
    val scope = rememberCoroutineScope()
    val pick = rememberLauncherForActivityResult(ActivityResultContracts.OpenDocumentTree()) { tree: Uri? ->
        if (tree != null) scope.launch {
            val dir = withContext(Dispatchers.IO) { BundleImport.copyIn(context, tree) }
            state.open(scope, dir, verify = true)
        }
    }
    Button(onClick = { pick.launch(null) }) { Text("Choose a bundle folder (copied into app storage)") }
    for (dir in BundleImport.installed(context)) {
        Button(onClick = { state.open(scope, dir, verify = false) }, modifier = Modifier.fillMaxWidth()) { Text("Open ${dir.name}") }
    }
}

@Composable
fun IngestScreen(state: DemoState) {
    val context = LocalContext.current
    val scope = rememberCoroutineScope()
    var date by remember { mutableStateOf("8 May 2023") }
    var turns by remember { mutableStateOf("Caroline: I went to a support group yesterday.\nMelanie: How was it?") }
    val pick = rememberLauncherForActivityResult(ActivityResultContracts.OpenDocument()) { uri: Uri? ->
        if (uri != null) {
            // the core reads a .jsonl name as JSONL turns and any other as LoCoMo JSON
            val jsonl = (uri.lastPathSegment ?: "").endsWith(".jsonl")
            val copy = File(context.cacheDir, if (jsonl) "conversation.jsonl" else "conversation.json")
            context.contentResolver.openInputStream(uri)!!.use { input -> copy.outputStream().use { input.copyTo(it) } }
            state.run(scope, "ingest") { it.ingest(JSONObject().put("store", state.store).put("file", copy.path)) }
        }
    }
    OutlinedTextField(date, { date = it }, label = { Text("Session date") }, modifier = Modifier.fillMaxWidth())
    OutlinedTextField(turns, { turns = it }, label = { Text("Turns, one per line: Speaker: text") }, modifier = Modifier.fillMaxWidth())
    Button(onClick = { state.run(scope, "ingest") { it.ingest(typedTurns(state.store, turns, date)) } }) { Text("Ingest typed turns") }
    Button(onClick = { pick.launch(arrayOf("application/json", "application/x-ndjson", "*/*")) }) { Text("Ingest a JSONL / LoCoMo file") }
}

/** Typed "Speaker: text" lines as the C API's turns. */
fun typedTurns(store: String, text: String, date: String): JSONObject {
    val turns = JSONArray()
    for (line in text.lines().filter { it.isNotBlank() }) {
        val speaker = line.substringBefore(':', "User").trim()
        turns.put(JSONObject().put("speaker", speaker).put("text", line.substringAfter(':').trim()).put("date", date))
    }
    return JSONObject().put("store", store).put("turns", turns)
}

@Composable
fun MemoriesScreen(state: DemoState) {
    val scope = rememberCoroutineScope()
    var history by remember { mutableStateOf(true) }
    Switch(checked = history, onCheckedChange = { history = it })
    Text(if (history) "with history" else "current memories only")
    Button(onClick = { state.run(scope, "memories") { it.memories(JSONObject().put("store", state.store).put("history", history)) } }) {
        Text("Show memories")
    }
}

@Composable
fun AskScreen(state: DemoState) {
    val scope = rememberCoroutineScope()
    var question by remember { mutableStateOf("When did Caroline go to the support group?") }
    OutlinedTextField(question, { question = it }, label = { Text("Question") }, modifier = Modifier.fillMaxWidth())
    Button(onClick = { state.run(scope, "ask") { it.ask(JSONObject().put("store", state.store).put("question", question)) } }) { Text("Ask") }
}

@Composable
fun TraceScreen(state: DemoState) {
    val context = LocalContext.current
    Text("Every generation is appended to ${state.trace.path}")
    Button(onClick = {
        val uri = FileProvider.getUriForFile(context, "org.memlora.demo.files", state.trace)
        val send = Intent(Intent.ACTION_SEND).setType("application/x-ndjson").putExtra(Intent.EXTRA_STREAM, uri)
            .addFlags(Intent.FLAG_GRANT_READ_URI_PERMISSION)
        context.startActivity(Intent.createChooser(send, "Share the device trace"))
    }) { Text("Share the device trace") }
    Button(onClick = { state.trace.delete(); state.status = "trace cleared" }) { Text("Clear the trace") }
}

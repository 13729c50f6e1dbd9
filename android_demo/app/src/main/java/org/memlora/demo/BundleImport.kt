package org.memlora.demo

import android.content.Context
import android.net.Uri
import androidx.documentfile.provider.DocumentFile
import java.io.File

/**
 * A bundle chosen with the folder picker is copied into app storage (files/bundles/<name>), because the core
 * reads plain paths and ExecuTorch maps its programs from files. The copy is written aside and renamed, so a
 * half-copied bundle is never opened; the core then verifies every sha256 once.
 */
object BundleImport {
    fun copyIn(context: Context, tree: Uri): File {
        val source = DocumentFile.fromTreeUri(context, tree) ?: throw CoreException("$tree: not a folder")
        val name = source.name ?: "bundle"
        val root = File(context.filesDir, "bundles").apply { mkdirs() }
        val partial = File(root, "$name.partial").apply { deleteRecursively() }
        copyTree(context, source, partial)
        val target = File(root, name).apply { deleteRecursively() }
        if (!partial.renameTo(target)) throw CoreException("$target: cannot move the copied bundle into place")
        return target
    }

    fun installed(context: Context): List<File> =
        File(context.filesDir, "bundles").listFiles { f -> f.isDirectory && !f.name.endsWith(".partial") }
            ?.sortedBy { it.name } ?: emptyList()

    private fun copyTree(context: Context, dir: DocumentFile, into: File) {
        into.mkdirs()
        for (child in dir.listFiles()) {
            val out = File(into, child.name ?: continue)
            if (child.isDirectory) {
                copyTree(context, child, out)
            } else {
                context.contentResolver.openInputStream(child.uri).use { input ->
                    out.outputStream().use { input!!.copyTo(it) }
                }
            }
        }
    }
}

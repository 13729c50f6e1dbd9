"""The bundle: one directory an app or a backend loads -- manifest, tokenizer, per-target artifacts, golden traces.

Layout::

    manifest.json            schema `memlora/schemas/manifest.schema.json`; sha256 of every other file
    tokenizer/               the HF tokenizer files (tokenizer.json, tokenizer_config.json, ...)
    <target>/                per-target artifacts (onnx/base.onnx, onnx/extract.onnx_adapter, ...)
    constraints/automaton.bin  the operations' output constraints (memlora.constrain, docs/constraints.md)
    golden/traces.jsonl      reference outputs (memlora.trace format) an app replays as a self-test

Writing goes to a hidden temporary sibling directory that is renamed into place only when complete, so an
interrupted export never leaves a bundle behind, and only a directory that is a bundle is ever replaced
(`memlora.replace`). Loading validates the schema and every checksum and names the bad file.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from memlora import constrain, replace
from memlora.checksum import sha256_file
from memlora.errors import MemloraError
from memlora.paths import SCHEMAS
from memlora.recipe import QuantRecipe
from memlora.replace import OWNER, only_files

if TYPE_CHECKING:  # the runtimes read bundles without importing torch
    from .decoder import DecoderConfig


SCHEMA_VERSION = "memlora-bundle/3"
OLD_VERSIONS = {"memlora-bundle/1": ("0.2", "whose quantization recipes this version cannot read"),
                "memlora-bundle/2": ("0.3", "which has no output constraints for this version to decode with")}
"""Manifest versions of earlier memlora releases and why they are refused (with how to re-export)."""
MANIFEST = "manifest.json"
CONSTRAINTS_FILE = "constraints/automaton.bin"
TOKENIZER_DIR = "tokenizer"
SCHEMA_PATH = SCHEMAS / "manifest.schema.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "generation_config.json")


def eos_ids(config: DecoderConfig, tokenizer) -> list[int]:
    """The ids that end generation: the model config's, then the tokenizer's, once each (the manifest's list,
    and what the ExecuTorch runner metadata declares)."""
    own = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return list(dict.fromkeys([*config.eos_token_ids, *own]))


def model_entry(config: DecoderConfig, name: str, tokenizer) -> dict:
    """Model facts for the manifest: architecture, sizes, context, special tokens (eos ids included)."""
    eos = eos_ids(config, tokenizer)
    specials = {t: tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens}
    return {
        "name": name,
        "architecture": config.architecture,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_layers,
        "num_heads": config.num_heads,
        "num_kv_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "max_context": config.max_context,
        "rope_type": config.rope_type,
        "rope_theta": config.rope_theta,
        "tie_embeddings": config.tie_embeddings,
        "special_tokens": {
            "bos_id": config.bos_token_id,
            "eos_ids": eos,
            "pad_id": tokenizer.pad_token_id,
            "tokens": specials,
        },
    }


def copy_files(src: Path, bundle_dir: Path, rel_dir: str, names: tuple[str, ...]) -> list[str]:
    """Copy the files of `names` that `src` has into ``bundle_dir/rel_dir``; their bundle-relative paths."""
    dest = bundle_dir / rel_dir
    dest.mkdir(parents=True, exist_ok=True)
    files = []
    for name in names:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, dest / name)
            files.append(f"{rel_dir}/{name}")
    if not any(f.endswith("tokenizer.json") for f in files):
        raise MemloraError(f"{src}: no tokenizer.json (a fast tokenizer is required for the bundle)")
    return files


def copy_tokenizer(model_dir: Path, bundle_dir: Path) -> dict:
    """Copy the tokenizer files the model directory has; the manifest's ``tokenizer`` entry."""
    return {"dir": TOKENIZER_DIR, "files": copy_files(model_dir, bundle_dir, TOKENIZER_DIR, TOKENIZER_FILES)}


def write_constraints(constraints: constrain.Constraints, bundle_dir: Path) -> dict:
    """Write the constraint file into the bundle; the manifest's ``constraints`` entry."""
    path = bundle_dir / CONSTRAINTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(constraints.to_bytes())
    return {"file": CONSTRAINTS_FILE, "format": constrain.FORMAT, "grammar": constraints.grammar,
            "max_shown": constraints.max_shown, "tokenizer_sha256": constraints.tokenizer_sha256,
            "tables": {name: len(t.next) for name, t in constraints.tables.items()}}


def checksums(bundle_dir: Path) -> dict[str, str]:
    """sha256 of every file under `bundle_dir` except the manifest, keyed by '/'-separated relative path."""
    return {
        p.relative_to(bundle_dir).as_posix(): sha256_file(p)
        for p in sorted(bundle_dir.rglob("*"))
        if p.is_file() and p.relative_to(bundle_dir).as_posix() not in (MANIFEST, OWNER)
    }


def validate_manifest(manifest: dict, source: Path) -> None:
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    try:
        jsonschema.validate(manifest, schema)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise MemloraError(f"{source}: manifest does not match {SCHEMA_PATH.name} at {where}: {e.message}") from e


def recognise_bundle(path: Path) -> str | None:
    """None when `path` is a bundle memlora wrote: a schema-valid manifest (or one of an earlier release, which
    export may replace) and no file it does not list."""
    if not (path / MANIFEST).is_file():
        return f"no {MANIFEST}"
    try:
        manifest = read_manifest(path)
    except OldBundle as old:
        manifest = old.manifest
    except MemloraError:
        return f"its {MANIFEST} is not a bundle manifest"
    return only_files(path, {MANIFEST, *manifest["files"]})


def check_out(out: Path) -> None:
    """Refuse `out` unless it is new, empty or a bundle -- before any work, so a refusal writes nothing
    anywhere (not even a cache)."""
    replace.check_replaceable(Path(out).resolve(), recognise_bundle, "bundle")


def staging(out: Path):
    """A staging directory for a bundle at `out` (checked again); see `memlora.replace`."""
    return replace.staging(out, recognise_bundle, "bundle")


def publish(tmp: Path, out: Path, manifest: dict) -> Path:
    """Checksum every file, validate and write the manifest, then rename the bundle into place."""
    manifest = {**manifest, "files": checksums(tmp)}
    validate_manifest(manifest, tmp / MANIFEST)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return replace.replace_dir(tmp, out, recognise_bundle, "bundle")


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict

    def target(self, name: str) -> dict:
        try:
            return self.manifest["targets"][name]
        except KeyError:
            have = ", ".join(self.manifest["targets"]) or "none"
            raise MemloraError(f"{self.path}: bundle has no {name} target (has: {have})") from None

    def recipe(self, name: str) -> QuantRecipe:
        """The typed quantization recipe of target `name` (checked when the manifest was read)."""
        return QuantRecipe.from_json(self.target(name)["quantization"], f"{self.path / MANIFEST}: {name}")

    @property
    def eos_ids(self) -> set[int]:
        return set(self.manifest["model"]["special_tokens"]["eos_ids"])

    @property
    def golden_file(self) -> Path:
        return self.path / self.manifest["golden"]["file"]

    @property
    def constraints(self) -> constrain.Constraints:
        """The output constraints every backend of this bundle decodes with."""
        return constrain.load(self.path / self.manifest["constraints"]["file"])


class OldBundle(MemloraError):
    """A bundle an earlier memlora wrote (listed files kept, so export can still replace it)."""

    def __init__(self, message: str, manifest: dict):
        super().__init__(message)
        self.manifest = manifest


def _old_bundle(manifest: object, where: Path) -> OldBundle | None:
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if not isinstance(version, str) or version not in OLD_VERSIONS or not isinstance(manifest.get("files"), dict):
        return None
    release, why = OLD_VERSIONS[version]
    return OldBundle(f"{where}: a bundle of memlora {release} ({version}), {why}; re-export it with `memlora "
                     f"export ... --out {where.parent}` (export replaces it)", {"files": manifest["files"]})


def read_manifest(path: Path) -> dict:
    """The schema-valid manifest of the bundle at `path`, each target's recipe checked as a `QuantRecipe`; any
    problem is one error naming the file."""
    manifest_path = Path(path) / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise MemloraError(f"{manifest_path}: cannot read bundle manifest ({e.strerror})") from e
    except RecursionError as e:
        raise MemloraError(f"{manifest_path}: not valid JSON (nested too deeply)") from e
    except ValueError as e:  # UnicodeDecodeError included
        raise MemloraError(f"{manifest_path}: not valid JSON ({e})") from e
    old = _old_bundle(manifest, manifest_path)
    if old is not None:
        raise old
    validate_manifest(manifest, manifest_path)
    for name, entry in manifest["targets"].items():
        QuantRecipe.from_json(entry["quantization"], f"{manifest_path}: targets.{name}.quantization")
    for name, entry in manifest.get("embedder", {}).get("targets", {}).items():
        QuantRecipe.from_json(entry["quantization"], f"{manifest_path}: embedder.targets.{name}.quantization")
    bad = next((rel for rel in manifest["files"] if Path(rel).is_absolute() or ".." in Path(rel).parts), None)
    if bad is not None:
        raise MemloraError(f"{manifest_path}: lists {bad!r}, which is outside the bundle")
    return manifest


def load_bundle(path: Path, verify: bool = True) -> Bundle:
    """Read and check a bundle: manifest schema, every listed file present with its sha256, nothing extra."""
    path = Path(path)
    manifest = read_manifest(path)
    if verify:
        listed = manifest["files"]
        for rel, expected in listed.items():
            f = path / rel
            try:
                present = f.is_file()
                actual = sha256_file(f) if present else None
            except OSError as e:
                raise MemloraError(f"{f}: cannot read a file the manifest lists ({e.strerror})") from e
            if not present:
                raise MemloraError(f"{f}: listed in the manifest but missing from the bundle")
            if actual != expected:
                raise MemloraError(
                    f"{f}: sha256 mismatch (manifest {expected[:12]}..., file {actual[:12]}...): "
                    "the file is corrupt or was modified; re-export the bundle"
                )
        extra = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                       if p.is_file() and p.name != MANIFEST and p.relative_to(path).as_posix() not in listed)
        if extra:
            raise MemloraError(f"{path / extra[0]}: not listed in the manifest (bundle was modified)")
    return Bundle(path, manifest)

"""`memlora bench`: every exported artifact against the reference, the peers and the memory-bandwidth limit.

Library function `run_bench`; `main` is the thin CLI wrapper. Every row -- ours, the eager PyTorch
reference (fp32 and bf16) and each peer -- runs in a fresh process on the same prompt token ids, with
threads pinned to the same count; ours are driven through `memlora.generate` with an adapter active.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from memlora.errors import MemloraError
from memlora.options import Adapters, Model

from . import bandwidth, embedder, genai, peers, summary
from .measure import BENCH_ADAPTER, BenchConfig, Job, measure_in_subprocess


def benchmark_prompt(tokenizer, n: int) -> list[int]:
    """Exactly `n` token ids of a real extraction prompt (the demo conversation, repeated to length),
    keeping the chat template's head and the assistant turn's opening at the end."""
    from memlora import prompts
    from memlora.conversations import load_conversation

    conv = load_conversation(Path(prompts.__file__).parent / "data" / "demo_conversation.jsonl")
    turns = [t for s in conv.sessions for t in s.turns]
    tail = 24
    rendered = prompts.render(tokenizer, prompts.extract_messages(turns))
    while len(rendered) < n + tail:
        turns = turns + turns
        rendered = prompts.render(tokenizer, prompts.extract_messages(turns))
    return rendered[: n - tail] + rendered[-tail:]


def machine() -> dict:
    """What the numbers were measured on, including how busy it was."""
    cpu = ""
    flags: list[str] = []
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = [f for f in line.split(":", 1)[1].split() if f.startswith(("avx512_bf16", "avx512f", "avx2", "amx"))]
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "cpu_flags": sorted(flags),
            "memory_gib": round(mem, 1), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "hostname": platform.node(),
            "load_average_start": list(os.getloadavg())}


def bundle_dirs(paths: list[Path]) -> list[Path]:
    """Bundles named directly, or every bundle one level under a directory that is not one itself."""
    found = []
    for p in paths:
        if (p / "manifest.json").is_file():
            found.append(p)
        else:
            inner = sorted(d for d in p.glob("*/") if (d / "manifest.json").is_file()) if p.is_dir() else []
            if not inner:
                raise MemloraError(f"{p}: not a bundle (no manifest.json) and holds no bundles")
            found.extend(inner)
    return found


def our_artifacts(bundles: list[Path], targets: list[str] | None) -> list[dict]:
    """One row per (bundle, target): mode, precision, size on disk and the files it reads per token."""
    from memlora.export.bundle import load_bundle

    rows = []
    for path in bundles:
        b = load_bundle(path, verify=False)
        for name, entry in b.manifest["targets"].items():
            if targets and name not in targets:
                continue
            files = [path / f for f in entry["files"]]
            rows.append({"target": name, "mode": entry["mode"], "precision": b.recipe(name).scheme,
                         "bundle": str(path), "size_mb": sum(f.stat().st_size for f in files) / 1e6,
                         "entry": entry})
    if not rows:
        raise MemloraError(f"no {'/'.join(targets or ['exported'])} target in {', '.join(map(str, bundles))}")
    return rows


def run_bench(
    bundles: list[Path],
    model_dir: Path,
    adapters_dir: Path,
    targets: list[str] | None = None,
    peer_names: tuple[str, ...] = peers.PEERS,
    config: BenchConfig = BenchConfig(),
    log: Callable[[str], None] = print,
) -> dict:
    """Measure everything and return the report dict (see `summary.assemble` for its keys; ``embedders``: the
    retrieval embedders' rows, `embedder.embedder_rows`)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    info = machine()
    log(f"machine: {info['cpu']}, {info['cores']} cores, load average {info['load_average_start']}")
    bw = bandwidth.read_bandwidth_gbs(config.threads)
    log(f"memory read bandwidth: {bw:.1f} GB/s")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prompt = benchmark_prompt(tokenizer, config.prompt_tokens)
    tok_file = str(model_dir / "tokenizer.json")
    Tokenizer.from_file(tok_file)  # fail early on an unreadable tokenizer
    settings = {"config": config.__dict__, "prompt": prompt, "tokenizer": tok_file}

    # every row is a job; the jobs run `config.rounds` times, alternate rounds in reverse order
    refs = {dtype: (f"reference: eager PyTorch {dtype}",
                    Job(backend="torch", model=str(model_dir), adapters_dir=str(adapters_dir), adapter=BENCH_ADAPTER,
                        dtype=dtype, extra_runs=[None] if dtype == "float32" else [], **settings))
            for dtype in ("float32", "bfloat16")}
    arts = our_artifacts(bundle_dirs(bundles), targets)
    our_jobs = [(f"ours {i}: {a['target']} {a['mode']} {a['precision']} ({a['bundle']})", a,
                 Job(backend=a["target"], bundle=a["bundle"], adapter=BENCH_ADAPTER, **settings))
                for i, a in enumerate(arts)]
    # the same ONNX bundles through onnxruntime-genai's own API and loop
    genai_jobs = [(f"{genai.RUNNER} {i}: onnx {a['mode']} {a['precision']} ({a['bundle']})", a,
                   Job(backend=genai.RUNNER, bundle=a["bundle"], adapter=BENCH_ADAPTER, **settings))
                  for i, a in enumerate(arts) if a["target"] == "onnx"]
    peer_settings = {"prompt": prompt, "decode_tokens": config.decode_tokens, "warmup": config.warmup,
                     "repeats": config.repeats, "threads": config.threads}
    peer_arts, peer_rows = [], []
    for name in peer_names:
        try:
            peer_arts += peers.prepare(name, model_dir, adapters_dir / BENCH_ADAPTER,
                                       config.prompt_tokens + config.decode_tokens + 64,
                                       config.threads, log)
        except MemloraError as e:
            log(f"  peer {name} unavailable: {e}")
            peer_rows.append({"name": name, "error": str(e)})
    theirs = [(f"peer {i}: {a.peer} {a.precision}{f' + {a.adapter} LoRA' if a.adapter else ''}", a)
              for i, a in enumerate(peer_arts)]
    jobs: list[tuple[str, Callable[[], dict]]] = [
        *((label, lambda job=job: measure_in_subprocess(job)) for label, job in refs.values()),
        *((label, lambda job=job: measure_in_subprocess(job)) for label, _, job in our_jobs + genai_jobs),
        *((label, lambda art=art: peers.measure_peer(art, peer_settings)) for label, art in theirs)]

    runs: dict[str, list[dict]] = {label: [] for label, _ in jobs}
    failed: dict[str, str] = {}
    for r in range(config.rounds):
        for label, run in jobs if r % 2 == 0 else jobs[::-1]:
            if label in failed:
                continue
            log(f"round {r + 1}/{config.rounds} {label}")
            try:
                runs[label].append(run())
            except MemloraError as e:
                if label in (ref for ref, _ in refs.values()):  # no reference, no report
                    raise
                log(f"  failed: {e}")
                failed[label] = str(e)

    def row(label: str, fields: dict) -> dict:
        """A row's fields with its merged measurements, or with the error that stopped it."""
        if label in failed:
            return {**fields, "error": failed[label]}
        return {**fields, **summary.merge_rounds(runs[label])}

    reference = {dtype: summary.merge_rounds(runs[label]) for dtype, (label, _) in refs.items()}
    ours = [row(label, art) for label, art, _ in our_jobs]
    through_genai = [row(label, art) for label, art, _ in genai_jobs]
    peer_rows += [row(label, {"name": a.peer, "precision": a.precision, "adapter": a.adapter,
                                     "lora": a.lora and str(a.lora)})
                  for label, a in theirs]

    info["load_average_end"] = list(os.getloadavg())
    # measured again at the end and the best kept: a busy moment at the start must not lower the limit
    info["bandwidth_gbs_start_end"] = [bw, bandwidth.read_bandwidth_gbs(config.threads)]
    bw = max(info["bandwidth_gbs_start_end"])
    result = summary.assemble(info, bw, config, prompt, bandwidth.model_config(model_dir), reference, ours,
                              peer_rows, through_genai)
    result["embedders"] = embedder.embedder_rows(bundle_dirs(bundles), config.threads, config.repeats, log)
    return result


def main(
    bundle: Annotated[list[Path], typer.Option("--bundle", help="bundle directory (repeatable; a directory of bundles also works)")],
    json_out: Annotated[Path, typer.Option("--json", help="write the results here")],
    targets: Annotated[Optional[str], typer.Option("--targets", help="only these targets (comma-separated)")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="write a decode/prefill plot (PNG) here")] = None,
    docs: Annotated[Optional[Path], typer.Option("--docs", help="write the Markdown report here")] = Path("docs/benchmarks.md"),
    peer: Annotated[str, typer.Option("--peers", help=f"peers to run ({', '.join(peers.PEERS)}; 'none' for none)")] = ",".join(peers.PEERS),
    repeats: Annotated[int, typer.Option("--repeats", help="timed repeats per row and round (after one warm-up)")] = 3,
    rounds: Annotated[int, typer.Option("--rounds", help="passes over all rows, alternately reversed")] = 2,
    model: Model = None,
    adapters: Adapters = None,
) -> None:
    """Benchmark every exported artifact against eager PyTorch, the peers and the bandwidth roofline."""
    from memlora.paths import default_model_dir
    from memlora.session import default_adapters

    from . import report

    model_dir = Path(model) if model else default_model_dir()
    adapters_dir = adapters or default_adapters()
    if adapters_dir is None:
        raise MemloraError("pass --adapters DIR: the adapters the bundles were exported with (the reference runs them)")
    names = () if peer == "none" else tuple(p.strip() for p in peer.split(",") if p.strip())
    unknown = [p for p in names if p not in peers.PEERS]
    if unknown:
        raise MemloraError(f"unknown peer {unknown[0]!r}; choose from {', '.join(peers.PEERS)}")
    t0 = time.time()
    result = run_bench(list(bundle), model_dir, Path(adapters_dir),
                       [t.strip() for t in targets.split(",")] if targets else None, names,
                       BenchConfig(repeats=repeats, rounds=rounds), log=lambda s: typer.echo(s, err=True))
    result["elapsed_s"] = round(time.time() - t0, 1)
    report.write_json(result, json_out)
    if plot:
        report.write_plot(result, plot)
    if docs:
        report.write_markdown(result, docs, plot)
    typer.echo(report.table(result))
    typer.echo(embedder.table(result["embedders"]))
    typer.echo(f"results written to {json_out}" + (f", {docs}" if docs else "") + (f", {plot}" if plot else ""))

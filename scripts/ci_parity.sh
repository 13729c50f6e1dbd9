#!/usr/bin/env bash
# The CI parity gate, the one script .github/workflows/parity-gate.yml runs (docs/ci.md):
#   export a bundle from a model and adapters, run `memlora parity` on it, leave the JSON, HTML, JUnit and
#   Markdown reports in OUT, append the summary to $GITHUB_STEP_SUMMARY when set, exit as parity does
#   (0 passed, 1 a gate failed, 2 bad input).
# usage: scripts/ci_parity.sh --model DIR|default --adapters DIR --bundle DIR --out DIR --targets onnx[,coreml,...]
#                             [--mode separable|merged] [--quant fp32|fp16|int8|int4|pal4] [--max-context N]
#                             [--thresholds FILE] [--baseline OLD_REPORT.json] [--quick] [--setup]
# --setup first runs scripts/bootstrap.sh (.venv) and `memlora setup` (the default model); MEMLORA names the
# memlora command (default: .venv/bin/memlora).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=separable quant=int8 max_context=2048 thresholds="" baseline="" quick="" setup=""
model="" adapters="" bundle="" out="" targets=""
while [ $# -gt 0 ]; do
    case "$1" in
        --model) model=$2; shift 2 ;;
        --adapters) adapters=$2; shift 2 ;;
        --bundle) bundle=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --targets) targets=$2; shift 2 ;;
        --mode) mode=$2; shift 2 ;;
        --quant) quant=$2; shift 2 ;;
        --max-context) max_context=$2; shift 2 ;;
        --thresholds) thresholds=$2; shift 2 ;;
        --baseline) baseline=$2; shift 2 ;;
        --quick) quick=1; shift ;;
        --setup) setup=1; shift ;;
        *) echo "ci_parity.sh: unknown argument $1 (see the usage at the top of $0)" >&2; exit 2 ;;
    esac
done
for name in model adapters bundle out targets; do
    if [ -z "${!name}" ]; then echo "ci_parity.sh: --$name is required" >&2; exit 2; fi
done
if [ -n "$setup" ]; then
    scripts/bootstrap.sh
    .venv/bin/memlora setup
fi
memlora=${MEMLORA:-.venv/bin/memlora}
model_args=()
if [ "$model" != default ]; then model_args=(--model "$model"); fi
mkdir -p "$out"
"$memlora" export "${model_args[@]}" --adapters "$adapters" --target "$targets" --mode "$mode" --quant "$quant" \
    --max-context "$max_context" --out "$bundle"
parity=("$memlora" parity --bundle "$bundle" "${model_args[@]}" --adapters "$adapters" --targets "$targets"
        --json "$out/parity.json" --html "$out/parity.html" --junit "$out/parity.xml" --summary "$out/parity.md")
if [ -n "$thresholds" ]; then parity+=(--thresholds "$thresholds"); fi
if [ -n "$baseline" ]; then parity+=(--baseline "$baseline"); fi
if [ -n "$quick" ]; then parity+=(--quick); fi
status=0
"${parity[@]}" || status=$?
if [ -n "${GITHUB_STEP_SUMMARY:-}" ] && [ -f "$out/parity.md" ]; then
    cat "$out/parity.md" >> "$GITHUB_STEP_SUMMARY"
fi
exit "$status"

#!/usr/bin/env bash
# The prepared GPU check (bench/gpu/README.md): percs built with its CUDA kernels, then the CUDA tests,
# compute-sanitizer memcheck, the GPU benchmarks and two short training runs, each under its own `timeout`,
# then one report: OUT/gpu_check.json, OUT/gpu_check.md and OUT/gpu_check.log.
#
#   bash bench/gpu/check.sh [--cpu-dry-run] [--carry DIR] [--out DIR] [--budget SECONDS] [--only STAGE,STAGE]
#
# --carry: the folder bench/gpu/pack.py wrote (default gpu-carry). --out: default $OUT (the device machine's
# output folder), else bench/gpu/out. --budget: seconds for everything (default 470 on the GPU, 300 for the
# dry run); a stage gets its own time box or what is left of the budget, less 25 s kept for the report.
# --only: run just these stages, and the build (each run installs percs afresh), e.g. --only tests,sanitizer.
# --cpu-dry-run: every stage at toy size on the CPU, nothing compiled; the CUDA parts report "skipped: no GPU".
# Exit status 0 when no stage failed or timed out.
set -uo pipefail
cd "$(dirname "$0")/../.."

dry=""
carry="gpu-carry"
out="${OUT:-bench/gpu/out}"
budget=""
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-dry-run) dry="--cpu-dry-run" ;;
    --carry) carry="$2"; shift ;;
    --out) out="$2"; shift ;;
    --budget) budget="$2"; shift ;;
    --only) only=",$2,"; shift ;;
    *) echo "check.sh: unknown argument $1 (see the comment at the top of $0)" >&2; exit 2 ;;
  esac
  shift
done
budget="${budget:-$([ -n "$dry" ] && echo 300 || echo 470)}"
python="${PYTHON:-python3}"
if [ ! -f "$carry/carry.json" ]; then
  echo "check.sh: $carry/carry.json is missing: run python bench/gpu/pack.py (--out $carry) first" >&2
  exit 2
fi

export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
work="$(mktemp -d "${TMPDIR:-/tmp}/percs-gpu-check.XXXXXX")"
mkdir -p "$work/parts" "$work/logs" "$work/site"
# The build stage installs percs and the carried wheels there (pip --target), ahead of the machine's packages.
export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}" PATH="$work/site/bin:$PATH"
[ -n "${KEEP_WORK:-}" ] || trap 'rm -rf "$work"' EXIT  # KEEP_WORK=1 keeps the parts, logs and training runs
started="$(date +%s)"
deadline=$((started + budget - 25))
echo "percs GPU check ($([ -n "$dry" ] && echo CPU dry run || echo GPU)): carry $carry, work $work, budget ${budget} s"

mapfile -t plan < <("$python" bench/gpu/check.py plan $dry)
for line in "${plan[@]}"; do
  read -r name box <<< "$line"
  status="$work/parts/$name.rc.json"
  if [ -n "$only" ] && [ "$name" != build ] && [[ "$only" != *",$name,"* ]]; then
    continue
  fi
  left=$((deadline - $(date +%s)))
  if [ "$left" -lt 15 ]; then
    echo "{\"rc\": null, \"skipped\": \"no time left in the budget of $budget s\"}" > "$status"
    echo "stage $name: skipped (no time left)"
    continue
  fi
  limit=$((box < left ? box : left))
  begin="$(date +%s)"
  timeout -k 10 "$limit" "$python" bench/gpu/check.py stage "$name" --carry "$carry" --work "$work" \
    --limit "$limit" $dry >> "$work/logs/$name.log" 2>&1
  rc=$?
  seconds=$(($(date +%s) - begin))
  echo "{\"rc\": $rc, \"seconds\": $seconds, \"limit_s\": $limit}" > "$status"
  echo "stage $name: exit status $rc after $seconds s (time box $limit s)"
done

"$python" bench/gpu/check.py report --carry "$carry" --work "$work" --out "$out" --started "$started" $dry

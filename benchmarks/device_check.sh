#!/usr/bin/env bash
# One GPU check of jaxdml against PyTorch (+ pytorch-metric-learning) and faiss, with one table.
#
#   bash benchmarks/device_check.sh                   # on a machine with one NVIDIA GPU
#   DEVICE_CHECK_SMOKE=1 bash benchmarks/device_check.sh   # no installs, CPU, tiny sizes
#   bash benchmarks/device_check.sh --fetch-wheels    # where a package index is reachable:
#        saves the missing pure-Python/CPU wheels in build/device-wheels, for a GPU machine that
#        has jax and torch with CUDA but no index (carry that folder there)
#
# Parts, each under `timeout` within one total budget (DEVICE_CHECK_BUDGET, 460 s by default):
#   1. setup: the Python to use, the project from this tree (PYTHONPATH), missing packages (from
#      build/device-wheels, else from the package index when it answers), jax's GPU backend
#      (jax[cuda13], then jax[cuda12], at the installed jax version, only if jax sees no GPU);
#   2. digit pairs (benchmarks/digits.py): the whole recipe in jaxdml and in PyTorch + PML;
#   3. exact search (benchmarks/device_check.py search): 10,000 queries among 1M x 512
#      references, k = 10: jaxdml knn / sharded_knn against PyTorch brute force and faiss;
#   4. the ResNet-50 Proxy-Anchor train step (benchmarks/train_step.py) at batch 32/64/128,
#      bf16 and fp32, jaxdml against PyTorch;
#   5. the table (benchmarks/device_check.py table) to $OUT/device_check.md when OUT is set,
#      else benchmarks/results/device_check.md (build/device_check_smoke/ in smoke mode), with
#      the whole log and the figures as JSON lines beside it.
# A part that cannot run (a package missing, no GPU) gets a line in the table instead.
# Environment: DEVICE_CHECK_PYTHON (interpreter; default python3, or python in smoke mode),
# DEVICE_CHECK_VENV (make or reuse this venv, with the system site packages, and use it),
# DEVICE_CHECK_WHEELS (wheel folder), DEVICE_CHECK_BUDGET (seconds for all parts).

set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
SMOKE="${DEVICE_CHECK_SMOKE:-0}"
WHEELS="${DEVICE_CHECK_WHEELS:-build/device-wheels}"

section() { printf '\n==== %s ====\n' "$*"; }

fetch_wheels() {
  # Wheels for the GPU machine's Python (3.12 unless DEVICE_CHECK_PYVER says otherwise).
  local pyver="${DEVICE_CHECK_PYVER:-3.12}" plat=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64; do plat+=(--platform "$p"); done
  local common=(-q --only-binary=:all: --python-version "$pyver" --implementation cp "${plat[@]}"
                -d "$WHEELS")
  mkdir -p "$WHEELS"
  section "fetching wheels into $WHEELS for Python $pyver"
  python3 -m pip download "${common[@]}" "pydantic>=2.6" || return 1  # with its few deps
  python3 -m pip download "${common[@]}" --no-deps "pytorch-metric-learning==2.9.0" faiss-cpu \
    || return 1
  ls -l "$WHEELS"
  du -sh "$WHEELS"
}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  fetch_wheels
  exit $?
fi

T_START=$SECONDS
RES="$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")"
SITE="$RES/site"
if [[ -n "${OUT:-}" ]]; then
  REPORT="$OUT/device_check.md"
elif [[ "$SMOKE" == 1 ]]; then  # git-ignored: a smoke run leaves nothing to commit
  REPORT="$ROOT/build/device_check_smoke/device_check.md"
else
  REPORT="$ROOT/benchmarks/results/device_check.md"
fi
LOG="${REPORT%.md}.log"
mkdir -p "$(dirname "$REPORT")"
exec > >(tee "$LOG") 2>&1
TEE_PID=$!

env_line() { echo "$*" >> "$RES/env.txt"; echo "  $*"; }
part_line() {  # name rc seconds command note
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$RES/parts.tsv"
}

# --- 1. setup ------------------------------------------------------------------------------------
section "1/5 setup ($([[ "$SMOKE" == 1 ]] && echo 'SMOKE: no installs, CPU, tiny sizes' \
  || echo 'GPU run'))"
echo "results folder: $RES; report: $REPORT"
if [[ "$SMOKE" == 1 ]]; then
  PY="${DEVICE_CHECK_PYTHON:-python}"
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""
else
  PY="${DEVICE_CHECK_PYTHON:-python3}"
fi
if [[ -n "${DEVICE_CHECK_VENV:-}" ]]; then
  [[ -x "$DEVICE_CHECK_VENV/bin/python" ]] \
    || "$PY" -m venv --system-site-packages "$DEVICE_CHECK_VENV" \
    || echo "could not make the venv $DEVICE_CHECK_VENV; staying with $PY"
  [[ -x "$DEVICE_CHECK_VENV/bin/python" ]] && PY="$DEVICE_CHECK_VENV/bin/python"
fi
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 \
  PIP_ROOT_USER_ACTION=ignore
# Both frameworks share the GPU in one process: JAX takes this share, not its default 75%.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}"
PIP=("$PY" -m pip --disable-pip-version-check)
SETUP_NOTES=()

modules() {  # prints "name=version" or "name=-" for each module the parts need
  timeout 180 "$PY" - <<'EOF' 2>/dev/null
import importlib
for name in ["numpy", "jax", "flax", "optax", "jaxdml", "pydantic", "sklearn", "torch",
             "pytorch_metric_learning", "faiss", "typing_extensions"]:
  try:
    m = importlib.import_module(name)
    print(f"{name}={getattr(m, '__version__', '?')}")
  except Exception:  # noqa: BLE001 - any failure to import counts as missing
    print(f"{name}=-")
EOF
}
declare -A VER=()
read_modules() {
  VER=()
  local kv
  while IFS= read -r kv; do VER["${kv%%=*}"]="${kv#*=}"; done < <(modules)
}
have() { [[ -n "${VER[$1]:-}" && "${VER[$1]}" != "-" ]]; }
jax_backend() {  # "gpu <kind> <n>" or "cpu ..." or "none"
  timeout 180 "$PY" -c "
import jax
d = jax.devices()
print(d[0].platform, len(d), d[0].device_kind)" 2>/dev/null | tail -1 || true
}
faiss_gpus() {
  timeout 60 "$PY" -c "import faiss; print(faiss.get_num_gpus())" 2>/dev/null | tail -1 || true
}
registry_up() {  # does pip reach a package index (one small download, short timeouts)?
  timeout 40 "${PIP[@]}" download -q --no-deps --timeout 8 --retries 0 -d "$RES/probe" \
    "pytorch-metric-learning==2.9.0" >/dev/null 2>&1
}
pip_try() {  # limit note args...: a pip install that may fail; the note goes to the table
  local limit=$1 note=$2; shift 2
  echo "+ pip install $* (timeout ${limit}s)"
  if timeout "$limit" "${PIP[@]}" install -q --timeout 15 --retries 1 "$@"; then
    SETUP_NOTES+=("installed $note"); return 0
  fi
  SETUP_NOTES+=("pip install $note failed"); return 1
}

echo "python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0], sys.executable)'))"
read_modules
BACKEND="$(jax_backend)"
echo "jax backend: ${BACKEND:-none}"
if [[ "$SMOKE" != 1 ]]; then
  need=()
  have jax && have torch || need+=(project)
  have pydantic || need+=(pydantic)
  have pytorch_metric_learning || need+=(pml)
  [[ "${BACKEND%% *}" == gpu ]] || need+=(jax-gpu)
  FAISS_GPUS=0
  have faiss && FAISS_GPUS="$(faiss_gpus)"
  [[ "$FAISS_GPUS" =~ ^[1-9] ]] || need+=(faiss-gpu)
  echo "missing: ${need[*]:-nothing}"
  ONLINE=0
  if ((${#need[@]})) && registry_up; then ONLINE=1; fi
  echo "package index reachable: $([[ $ONLINE == 1 ]] && echo yes || echo no)"
  SETUP_NOTES+=("package index $([[ $ONLINE == 1 ]] && echo reachable || echo unreachable)")
  if [[ $ONLINE == 1 ]]; then
    if [[ " ${need[*]} " == *" project "* ]]; then
      pip_try 300 'the project with [bench]' -e ".[bench]"
    else  # jax and torch are there (with CUDA, on a GPU image): add only what is missing
      have pydantic || pip_try 120 pydantic "pydantic>=2.6"
      have pytorch_metric_learning || pip_try 120 pytorch-metric-learning \
        --no-deps "pytorch-metric-learning==2.9.0"
    fi
    read_modules
    if [[ "$(jax_backend)" != gpu* ]] && have jax; then
      JAXV="${VER[jax]}"
      pip_try 240 "jax[cuda13]==$JAXV" "jax[cuda13]==$JAXV" \
        || pip_try 240 "jax[cuda12]==$JAXV" "jax[cuda12]==$JAXV"
    fi
    if [[ ! "$FAISS_GPUS" =~ ^[1-9] ]]; then
      pip_try 240 faiss-gpu-cu12 faiss-gpu-cu12
    fi
    read_modules
    BACKEND="$(jax_backend)"
  fi
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    wl=()
    for w in "$WHEELS"/*.whl; do
      case "$(basename "$w")" in
        faiss*) have faiss || wl+=("$w") ;;
        pytorch_metric_learning*) have pytorch_metric_learning || wl+=("$w") ;;
        typing_extensions*) have typing_extensions || wl+=("$w") ;;
        pydantic*|annotated_types*|typing_inspection*) have pydantic || wl+=("$w") ;;
        *) wl+=("$w") ;;
      esac
    done
    if ((${#wl[@]})); then
      echo "+ installing ${#wl[@]} carried wheels from $WHEELS into $SITE"
      if timeout 120 "${PIP[@]}" install -q --no-index --no-deps --no-compile --target "$SITE" \
          "${wl[@]}"; then
        SETUP_NOTES+=("carried wheels: $(for w in "${wl[@]}"; do basename "$w" | cut -d- -f1
          done | tr '\n' ' ')")
      else
        SETUP_NOTES+=("installing the carried wheels failed")
      fi
      read_modules
    fi
  fi
fi

GPU=0
[[ "${BACKEND%% *}" == gpu ]] && GPU=1
MARK=""
BANNER=""
if [[ "$SMOKE" == 1 ]]; then
  BANNER="SMOKE MODE: CPU, tiny sizes; these figures test the script, they are not benchmarks"
elif [[ $GPU == 0 ]]; then
  MARK="CPU"
  BANNER="NO GPU VISIBLE TO JAX (backend: ${BACKEND:-none}): every part ran on the CPU at the \
smoke sizes"
  echo "!!! $BANNER"
fi
: > "$RES/env.txt"
echo "environment:"
env_line "date: $(date -u '+%Y-%m-%d %H:%M UTC'); host: $(uname -m), $(nproc) CPU cores"
env_line "gpu (nvidia-smi): $(nvidia-smi --query-gpu=name,driver_version,memory.total \
  --format=csv,noheader 2>/dev/null | head -1 || true)"
env_line "python: $("$PY" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null) ($PY)"
env_line "jax backend: ${BACKEND:-none}"
vers=""
for m in jax flax optax numpy torch pytorch_metric_learning pydantic faiss; do
  vers+="$m ${VER[$m]:--}, "
done
env_line "versions: ${vers%, }"
[[ "${VER[torch]:--}" != - ]] && env_line "torch CUDA: $(timeout 120 "$PY" -c "
import torch
print(torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available()
      else 'not available')" 2>/dev/null | tail -1)"
env_line "commands run from the repository root with PYTHONPATH=<repo>:<carried wheels>, \
XLA_PYTHON_CLIENT_MEM_FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION$([[ "$SMOKE" == 1 ]] \
  && echo ', JAX_PLATFORMS=cpu')"
notes="$(IFS=';'; echo "${SETUP_NOTES[*]:-}")"
part_line setup 0 "$((SECONDS - T_START))" "" "${notes//;/; }"

# --- sizes ---------------------------------------------------------------------------------------
if [[ "$SMOKE" == 1 || $GPU == 0 ]]; then
  BUDGET="${DEVICE_CHECK_BUDGET:-900}"
  DIGITS_ARGS=(--seeds 0 --epochs 1 --torch-device cpu --threads 2)
  SEARCH_ARGS=(--refs 20000 --queries 1000 --k 10 --repeats 2 --chunk-sizes 1024
               --torch-chunk 1024 --check-queries 64)
  # ResNet-18 here: the same code path as ResNet-50, at a fraction of XLA's CPU compile time.
  TRAIN_ARGS=(--batch-sizes 4 --size 64 --depth 18 --dtypes bf16 fp32 --steps 2 --warmup 1
              --torch-device cpu --threads 2)
  RESERVE_SEARCH=120 TRAIN_MIN=200
else
  BUDGET="${DEVICE_CHECK_BUDGET:-460}"
  DIGITS_ARGS=(--seeds 0 --epochs 20 --torch-device cuda --conv-impl xla)
  SEARCH_ARGS=(--refs 1000000 --queries 10000 --k 10 --repeats 5 --chunk-sizes 1024 4096
               --torch-chunk 4096 --check-queries 256)
  TRAIN_ARGS=(--batch-sizes 32 64 128 --dtypes bf16 fp32 --steps 8 --warmup 3
              --torch-device cuda)
  RESERVE_SEARCH=110 TRAIN_MIN=200
fi
DEADLINE=$((T_START + BUDGET))

run_part() {  # name seconds_kept_for_later_parts note command...
  # The part may use what the total budget has left, less what the parts after it need.
  local name=$1 later=$2 note=$3; shift 3
  local limit=$((DEADLINE - SECONDS - later))
  ((limit < 30)) && limit=30
  echo "timeout ${limit}s"
  local t0=$SECONDS cmd
  cmd="$(printf '%q ' "$@")"
  echo "+ $cmd"
  timeout --kill-after=15 "$limit" "$@" --json "$RES/$name.jsonl" 2>&1 | tee "$RES/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "($name: exit $rc after $((SECONDS - t0)) s)"
  part_line "$name" "$rc" "$((SECONDS - t0))" "${cmd% }" "$note"
}
skip_part() {  # name reason
  echo "SKIPPED: $2"
  part_line "$1" skip 0 "" "$2"
}

have_jaxdml=0
have jax && have jaxdml && have flax && have optax && have_jaxdml=1
torch_flag=()
torch_note=""
if ! have torch || ! have pytorch_metric_learning; then
  torch_flag=(--skip-torch)
  torch_note="PyTorch side skipped: torch ${VER[torch]:--}, pytorch-metric-learning \
${VER[pytorch_metric_learning]:--}"
fi

# --- 2. digit pairs ------------------------------------------------------------------------------
section "2/5 digit pairs: jaxdml against PyTorch + PML (benchmarks/digits.py)"
if [[ $have_jaxdml == 0 ]]; then
  skip_part digits "jax, flax, optax or jaxdml does not import"
elif ! have pydantic; then
  skip_part digits "pydantic does not import (jaxdml's experiment config needs it)"
else
  run_part digits $((RESERVE_SEARCH + TRAIN_MIN)) "$torch_note" \
    "$PY" benchmarks/digits.py "${DIGITS_ARGS[@]}" "${torch_flag[@]}"
fi

# --- 3. exact search -----------------------------------------------------------------------------
section "3/5 exact search: jaxdml knn / sharded_knn against PyTorch and faiss"
# Said on the faiss row when faiss is not on the GPU (read by device_check.py search).
export DEVICE_CHECK_FAISS_NOTE="no faiss with GPU support (faiss-gpu-cu12 installs only from a \
package index)"
[[ "$SMOKE" == 1 ]] && DEVICE_CHECK_FAISS_NOTE="smoke mode: CPU only"
if [[ $have_jaxdml == 0 ]]; then
  skip_part search "jax or jaxdml does not import"
else
  run_part search "$TRAIN_MIN" "" "$PY" benchmarks/device_check.py search "${SEARCH_ARGS[@]}"
fi

# --- 4. train step -------------------------------------------------------------------------------
section "4/5 ResNet Proxy-Anchor train step: jaxdml against PyTorch + PML (train_step.py)"
if [[ $have_jaxdml == 0 ]]; then
  skip_part train_step "jax, flax, optax or jaxdml does not import"
else
  run_part train_step 0 "$torch_note" "$PY" benchmarks/train_step.py "${TRAIN_ARGS[@]}" \
    "${torch_flag[@]}"
fi

# --- 5. table ------------------------------------------------------------------------------------
section "5/5 table ($((SECONDS - T_START)) s so far)"
"$PY" benchmarks/device_check.py table --results "$RES" --out "$REPORT" --banner "$BANNER" \
  --mark "$MARK" || python3 benchmarks/device_check.py table --results "$RES" --out "$REPORT" \
  --banner "$BANNER" --mark "$MARK"
rc=$?
cat "$RES"/*.jsonl > "${REPORT%.md}.jsonl" 2>/dev/null || true
echo "total: $((SECONDS - T_START)) s; table: $REPORT; log: $LOG"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null
exit $rc

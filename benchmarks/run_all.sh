#!/usr/bin/env bash
# Runs the ctrun benchmarks in turn, as root; results land in benchmarks/results/.
#   sudo benchmarks/run_all.sh           full runs (30 start-ups per tool, 500 containers)
#   sudo benchmarks/run_all.sh --quick   fewer repetitions, for a smoke check
# CTRUN_BIN picks the ctrun to measure (default: setup.sh's launcher /usr/local/bin/ctrun,
# else $CTRUN_VENV/bin/ctrun, the venv setup.sh makes, /opt/ctrun/venv unless set).  Every
# benchmark runs even if an earlier one failed; the exit status is non-zero if any of them
# failed.  A peer tool that cannot run is reported as a "PEER UNAVAILABLE:" line; the
# benchmark measures the rest.
set -uo pipefail
cd "$(dirname "$0")"
if [ "$(id -u)" != 0 ]; then
  echo "run_all.sh: run as root (sudo benchmarks/run_all.sh)" >&2
  exit 1
fi
# Debian's interpreter, as the project targets; the benchmarks that import ctrun
# (bench_list, bench_limits, bench_stats) re-execute themselves with ctrun's
PY=${CTRUN_BENCH_PYTHON:-/usr/bin/python3}
quick=0
case "${1:-}" in
  --quick) quick=1 ;;
  "") ;;
  *) echo "usage: run_all.sh [--quick]" >&2; exit 2 ;;
esac
if [ $quick = 1 ]; then
  run_args=(--runs 10 --warmup 2); list_args=(--runs 5 --warmup 1)
  limits_args=(--runs 10 --warmup 2 --api-runs 50); stats_args=(--runs 5 --warmup 1)
  network_args=(--runs 8 --warmup 2 --iperf-time 3 --iperf-rounds 1)
  import_args=(--runs 3 --warmup 1); vm_args=(--runs 2 --warmup 0)
  boot_args=(--runs 3 --warmup 0 --settle 2); oci_args=(--runs 5 --warmup 1)
  verbs_args=(--runs 5 --warmup 1)
  scale_args=(--runs 1 --counts 5,10)
else
  run_args=(); list_args=(); limits_args=(); stats_args=(); network_args=(); import_args=()
  vm_args=(); boot_args=(); oci_args=(); verbs_args=(); scale_args=()
fi
# bench_oci measures the runtime CTRUN_OCI_RUNTIME names (default: setup.sh's ctrun-oci)
oci_args+=(--runtime "${CTRUN_OCI_RUNTIME:-/usr/local/bin/ctrun-oci}")

failed=()
log=$(mktemp)
peers=$(mktemp)
trap 'rm -f "$log" "$peers"' EXIT
bench() {
  local name=$1; shift
  echo
  echo "================================================================ $name"
  # the output is also kept, for its PEER UNAVAILABLE lines (listed again at the end);
  # unbuffered, so stdout and stderr keep their order through the pipe
  PYTHONUNBUFFERED=1 "$PY" "./$name.py" "$@" | tee "$log"
  [ "${PIPESTATUS[0]}" = 0 ] || failed+=("$name")
  grep "^PEER UNAVAILABLE" "$log" | sed "s/^/$name: /" >> "$peers"
}
bench bench_run "${run_args[@]}"
bench bench_verbs "${verbs_args[@]}"
bench bench_monitor_memory
bench bench_list "${list_args[@]}"
bench bench_limits "${limits_args[@]}"
bench bench_stats "${stats_args[@]}"
bench bench_network "${network_args[@]}"
bench bench_import "${import_args[@]}"
bench bench_vm "${vm_args[@]}"
bench bench_boot "${boot_args[@]}"
bench bench_oci "${oci_args[@]}"
bench bench_scale "${scale_args[@]}"

echo
if [ -s "$peers" ]; then
  echo "run_all.sh: peers that could not run (the rest was measured):" >&2
  sort -u "$peers" >&2
fi
if [ ${#failed[@]} -gt 0 ]; then
  echo "run_all.sh: failed: ${failed[*]}" >&2
  exit 1
fi
echo "run_all.sh: all benchmarks ran; JSON results are in benchmarks/results/"

#!/usr/bin/env bash
# Stage one on a real scheduler: a private single-node Slurm (munged, slurmctld, slurmd in a
# temporary directory, as root), the job-array example of docs/scale-out.md submitted as it
# is written (its /shared prefix pointed at the temporary directory, and `distill` on PATH
# from target/release), `distill merge` as its last line says, and the merged shards
# compared with one run of the same pipeline. The node declares 16 CPUs and 8 GPUs
# (gres backed by /dev/null) so the example's --gres=gpu:1 --cpus-per-task=8 schedule.
#     bash tests/slurm.sh          (CI runs it; it says SKIPPED, and why, where Slurm
#                                   cannot be installed or started)
set -euo pipefail
cd "$(dirname "$0")/.."
skip() { echo "tests/slurm.sh: SKIPPED: $*" >&2; exit 0; }
bash .ci/setup-slurm || skip "Slurm could not be installed here (see above)"
export PATH="$PWD/target/release:$PWD/.venv/bin:$PATH"
[ -x target/release/distill ] || cargo build --release --quiet
tmp=$(mktemp -d)
node=$(hostname -s)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
mkdir -p "$tmp/state" "$tmp/spool" "$tmp/shared"
for i in 0 1 2 3 4 5 6 7; do ln -s /dev/null "$tmp/gpu$i"; done
mungekey -c -k "$tmp/munge.key" -f >/dev/null 2>&1 || dd if=/dev/urandom of="$tmp/munge.key" bs=1024 count=1 2>/dev/null
chmod 600 "$tmp/munge.key"
munged --key-file="$tmp/munge.key" --socket="$tmp/munge.sock" --pid-file="$tmp/munged.pid" \
    --log-file="$tmp/munged.log" --seed-file="$tmp/munge.seed" --force || skip "munged does not start here"
pids+=("$(cat "$tmp/munged.pid")")
cat > "$tmp/slurm.conf" <<CONF
ClusterName=distill
SlurmctldHost=$node
AuthType=auth/munge
AuthInfo=socket=$tmp/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/slurmctld.log
SlurmdLogFile=$tmp/slurmd.log
SlurmctldPort=46817
SlurmdPort=46818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName=$node CPUs=16 Gres=gpu:8 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
CONF
echo "NodeName=$node Name=gpu File=$tmp/gpu[0-7]" > "$tmp/gres.conf"
export SLURM_CONF=$tmp/slurm.conf
slurmctld -D -f "$SLURM_CONF" >"$tmp/slurmctld.out" 2>&1 & pids+=($!)
sleep 2
slurmd -D -f "$SLURM_CONF" -N "$node" >"$tmp/slurmd.out" 2>&1 & pids+=($!)
for _ in $(seq 30); do sinfo -h -o %t 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo -h -o %t 2>/dev/null | grep -q idle || skip "slurmd did not come up: $(tail -3 "$tmp/slurmctld.log" 2>/dev/null)"

# The example, as docs/scale-out.md writes it.
awk '/^#!\/bin\/bash/,/^```$/' docs/scale-out.md | grep -v '^```' | sed "s#/shared#$tmp/shared#g" > "$tmp/job.sh"
grep -q 'sbatch\|SBATCH --array=0-7' "$tmp/job.sh" || { echo "tests/slurm.sh: the job-array example was not found in docs/scale-out.md" >&2; exit 1; }
rc=0
timeout 300 sbatch --wait -o "$tmp/task-%a.out" "$tmp/job.sh" >/dev/null || rc=$?
[ $rc = 124 ] && skip "the array's tasks did not run within 300 s here: $(squeue -h 2>&1 | head -3)"
[ $rc = 0 ] || { tail -n 5 "$tmp"/task-*.out >&2; echo "tests/slurm.sh: FAILED: the array's tasks failed" >&2; exit 1; }
merge=$(sed -n 's/^# after the array: //p' "$tmp/job.sh")
$merge
distill cache-teacher --pipeline pipelines/lm.toml --out "$tmp/one" --quiet >/dev/null
python3 - "$tmp/shared/cache/lm" "$tmp/one" <<'PY'
import json, sys
a, b = (json.load(open(f"{d}/manifest.json")) for d in sys.argv[1:])
assert a["fingerprint"] == b["fingerprint"], "fingerprints differ"
assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]], "merged shards differ from one run's"
print(f"tests/slurm.sh: ok: a Slurm array of 8 tasks and merge gave one run's {len(a['shards'])} shards byte for byte")
PY

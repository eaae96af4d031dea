#!/usr/bin/env bash
# Time the README's first fenced block as a newcomer runs it: a fresh clone of this repository into a new
# folder, a new venv, empty caches (HOME points at an empty folder: pip, Hugging Face and rtsent caches start
# empty), HF_HUB_OFFLINE=1 (no hub), nothing from ../shared. Each line of the block is timed on its own.
#   bash benchmarks/readme_block.sh [BRANCH] [WORK_FOLDER]     (default: the current branch, /tmp/readme-block)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
branch="${1:-$(git -C "$repo" rev-parse --abbrev-ref HEAD)}"
work="${2:-/tmp/readme-block}"
rm -rf "$work" && mkdir -p "$work/home"
git clone --quiet --branch "$branch" "$repo" "$work/rtsent"
cd "$work/rtsent"
python3 - <<'PY' > "$work/block.sh"
import re
text = open("README.md", encoding="utf-8").read()
print(re.search(r"^```bash\n(.*?)^```$", text, re.M | re.S).group(1))
PY
echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD) on $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
export HOME="$work/home" HF_HUB_OFFLINE=1 PIP_CACHE_DIR="$work/home/.cache/pip"
unset PYTHONPATH RTSENT_HOME RTSENT_CACHE HF_HOME
start=$(date +%s.%N)
while IFS= read -r line; do
  [[ -z "${line// }" ]] && continue
  t0=$(date +%s.%N)
  eval "$line" > "$work/step.log" 2>&1 || { cat "$work/step.log"; echo "FAILED: $line"; exit 1; }
  t1=$(date +%s.%N)
  printf '%8.1f s  load %s  %s\n' "$(echo "$t1 - $t0" | bc)" "$(cut -d' ' -f1 /proc/loadavg)" "$line"
  tail -n 4 "$work/step.log" | sed 's/^/            | /'
done < "$work/block.sh"
printf '%8.1f s  total\n' "$(echo "$(date +%s.%N) - $start" | bc)"

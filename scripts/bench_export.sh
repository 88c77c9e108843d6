#!/usr/bin/env bash
# Export memory and speed: writes N generated trajectories (default sizes
# 2000 20000 100000; 4 steps each; a third web, a third code, a third code with
# 5 recorded model calls (shared message prefixes, 64 completion token ids and
# logprobs a call); 3-11 KiB a file), then runs `adp export` in every format
# and prints peak RSS and time for each size. Memory that does not grow with N
# shows that export streams the files. `rl` rows exist for the recorded third.
#
#   scripts/bench_export.sh [N ...]
set -euo pipefail
# shellcheck source=scripts/bench-common.sh
source "$(dirname "$0")/bench-common.sh"
cd "$ROOT"
bench_args "$@"
SIZES=("$@")
[[ ${#SIZES[@]} -eq 0 ]] && SIZES=(2000 20000 100000)
bench_build_bin adp
ADP="$TARGET_DIR/release/adp"
bench_workdir export "${TMPDIR:-/tmp}"
trap bench_cleanup EXIT

gen() { # gen N DIR
python3 - "$1" "$2" <<'PY'
import json, os, sys, time
n, out = int(sys.argv[1]), sys.argv[2]
d = os.path.join(out, "trajectories")
os.makedirs(d, exist_ok=True)
now = time.time()
for i in range(n):
    web = i % 3 == 0
    tid = f"bench_{i}"
    if web:
        task = {"task_id": tid, "task_type": "web", "description": f"Find the answer on page {i}",
                "expected_tools": [], "constraints": {"start_url": "http://127.0.0.1:8765/"},
                "max_steps": 10, "timeout": 300, "priority": 1}
        acts = [{"type": "goto", "url": "http://127.0.0.1:8765/"}, {"type": "click", "element": 3},
                {"type": "fill_and_submit", "element": 1, "text": f"query {i}"}, {"type": "finish", "answer": str(i)}]
        steps = [{"step_id": k, "action_type": "browser_action", "action_params": a,
                  "observation": ("Title: Page\nURL: http://127.0.0.1:8765/\n" + "lorem ipsum " * 60 + "\n[0] link Home\n[1] input q"),
                  "success": True, "error_type": None, "error_message": None, "timestamp": now, "duration": 0.08}
                 for k, a in enumerate(acts)]
        runtime, final = "web-runtime", str(i)
    else:
        llm = i % 3 == 1
        task = {"task_id": tid, "task_type": "code", "description": f"Compute fibonacci({i % 40})",
                "expected_tools": ["python_executor"], "constraints": {}, "max_steps": 5, "timeout": 300, "priority": 1}
        steps = [{"step_id": k, "action_type": "code_execution",
                  "action_params": {"code": "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n" + f"print(fib({i % 40}))\n" * (k + 1)},
                  "observation": "12345\n" * 40, "success": True, "error_type": None, "error_message": None,
                  "timestamp": now, "duration": 0.02} for k in range(4)]
        runtime, final = "sandbox-runtime", "12345\n"
    meta = {"policy": "heuristic", "cache_hit": i % 4 == 0, "attempt": 1}
    if not web and llm:
        calls, prev = [], []
        for k, s in enumerate(steps + [None]):
            added = ([{"role": "system", "content": "You are a careful coding agent. " * 8},
                      {"role": "user", "content": task["description"]}] if k == 0 else
                     [{"role": "assistant", "content": None, "tool_calls": [call]},
                      {"role": "tool", "tool_call_id": call["id"], "content": steps[k - 1]["observation"]}])
            call = s and {"id": f"call_{k}", "type": "function",
                          "function": {"name": "python", "arguments": json.dumps({"code": s["action_params"]["code"]})}}
            calls.append({"call": k, "step_id": k if s else None, "started_at": now, "latency": 0.3,
                          "request": {"model": "bench-model", "temperature": 0.2, "max_tokens": 512, "logprobs": True},
                          "messages_prefix": len(prev), "messages_added": added,
                          "response": {"id": f"c{k}", "model": "bench-model", "content": None if s else "12345",
                                       "tool_calls": [call] if s else [], "finish_reason": "tool_calls" if s else "stop",
                                       "usage": {"prompt_tokens": 300 + 100 * k, "completion_tokens": 64},
                                       "completion_token_ids": [1000 + j for j in range(64)],
                                       "logprobs": [-0.125 * (j % 8) for j in range(64)],
                                       "prompt_token_ids": list(range(300 + 100 * k))},
                          "error": None})
            prev = prev + added
        meta.update({"policy": "openai", "model": "bench-model", "llm_calls": calls})
    t = {"task_id": tid, "runtime_id": runtime, "success": i % 10 != 0, "steps": steps, "final_result": final,
         "error_type": None if i % 10 else "runtime_error", "error_message": None, "total_duration": 0.4,
         "metadata": meta, "created_at": now, "task": task}
    with open(os.path.join(d, tid + ".json"), "w") as f:
        json.dump(t, f, indent=2)
PY
}

echo "machine: $(nproc) cores; adp $("$ADP" --version | cut -d' ' -f2)"
printf '%-8s %-10s %12s %10s %12s %10s\n' files format "dataset" "time s" "files/s" "peak RSS"
for n in "${SIZES[@]}"; do
  rm -rf "$WORK/out"; mkdir -p "$WORK/out"
  gen "$n" "$WORK/out"
  for fmt in trajectory messages sharegpt rl; do
    /usr/bin/time -f '%e %M' -o "$WORK/time" env OUTPUT_DIR="$WORK/out" "$ADP" export --out "$WORK/data.jsonl" --format "$fmt" >/dev/null
    read -r secs kib < "$WORK/time"
    size=$(du -h "$WORK/data.jsonl" | cut -f1)
    python3 -c "import sys; n,s,k=int(sys.argv[1]),float(sys.argv[3]),int(sys.argv[4]); print(f'{n:<8} {sys.argv[2]:<10} {sys.argv[5]:>12} {s:>10.2f} {n/max(s,0.01):>12,.0f} {k/1024:>8.1f} MiB')" "$n" "$fmt" "$secs" "$kib" "$size"
  done
done

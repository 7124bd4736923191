#!/usr/bin/env python3
"""Runs the trust-policy comparison of specs/trust.md §6 and prints its table.

Every (adversary kind, trust policy) pair is run over three seeds of
sim/scenarios/federation.toml with 360 clients (the file's equivocating node and its
partition kept; `none` drops the adversary). Usage, from the repository root:

    cargo build --release -p nymstr-sim
    python3 scripts/trust_comparison.py [target/release/nymstr-sim] [work dir]
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile

SIM = sys.argv[1] if len(sys.argv) > 1 else "target/release/nymstr-sim"
WORK = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="nymstr-trust-")
BASE = open("sim/scenarios/federation.toml").read()
KINDS = ["none", "equivocate", "substitute_key", "drop_forwarded", "replay_head", "sybil"]
TRUSTS = ["tofu", "witness-quorum", "allowlist"]
SEEDS = [7, 8, 9]


def scenario(kind, trust, seed):
    sc = BASE.replace('trust = "witness-quorum"', f'trust = "{trust}"')
    sc = sc.replace("count = 600", "count = 360").replace("seed = 7", f"seed = {seed}")
    if kind == "none":
        head, rest = sc.split("[[adversaries]]")
        sc = head + "[[faults]]" + rest.split("[[faults]]")[1]
    else:
        sc = sc.replace('kind = "equivocate"', f'kind = "{kind}"')
    return sc


def main():
    print("| adversary | trust | detected | detection s (median) | forged key accepted, % of clients "
          "| false alarms | cross-node DMs delivered | partition converged | oracle violations |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in KINDS:
        for trust in TRUSTS:
            runs = []
            for seed in SEEDS:
                path = os.path.join(WORK, f"{kind}-{trust}-{seed}.toml")
                with open(path, "w") as f:
                    f.write(scenario(kind, trust, seed))
                out = subprocess.run([SIM, "run", path, "--json"], capture_output=True, text=True).stdout
                runs.append(json.loads(out))
            fed = [r["federation"] for r in runs]
            attacks = sum(x["attacks"] for x in fed)
            detected = sum(x["attacks_detected"] for x in fed)
            lat = [x["detection_latency_ms"]["p50"] for x in fed if x["attacks_detected"]]
            row = [
                kind,
                trust,
                f"{detected}/{attacks}",
                f"{statistics.median(lat) / 1000:.1f}" if lat else "–",
                f"{100 * statistics.mean(x['forged_key_accepted_share'] for x in fed):.2f}",
                sum(x["false_alarms"] for x in fed),
                f"{sum(x['cross_node_delivered'] for x in fed)}/{sum(x['cross_node_dm'] for x in fed)}",
                all(x["partition_converged"] for x in fed),
                sum(len(r["invariants"]["violations"]) for r in runs),
            ]
            print("| " + " | ".join(str(x) for x in row) + " |", flush=True)


if __name__ == "__main__":
    main()

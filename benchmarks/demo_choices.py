"""The two choices of the demo's conversion that are not the recipe's numbers, checked at 1x: its retrieval episodes
leave out MQAR, and it stops after distillation (no stage 3). The demo's own run (`hybridize demo --out DEMO`) is the
one side; this script makes the other: the same recipe on episodes of all four of the teacher's tasks (MQAR too),
through all four stages, and scores both of its models (after distill, after finetune) on the demo's prompts.

    hybridize demo --out out/demo
    python benchmarks/demo_choices.py --demo out/demo --out results/cpu-demo/choices.json

Writes one row per model: passkey and NIAH exact match at the teacher's training length (mean over the demo's
depths and samples), with the demo's hybrid read from its report.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", required=True, help="the output folder of a `hybridize demo` run")
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--work", default="out/demo-choices", help="where the conversion runs")
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from hybridize import demo
    from hybridize.data import iter_documents
    from hybridize.data.synthetic import FillerTokens
    from hybridize.evaluation.report import mean_over_depths
    from hybridize.evaluation.runner import EvalConfig, run_eval
    from hybridize.pipeline import Conversion, convert, load_recipe
    from hybridize.provenance import provenance
    from hybridize.teacher.recipe import teacher_recipe
    from hybridize.teacher.train import episode_documents

    teacher = demo.shipped_teacher()
    trained = json.loads((teacher / "config.json").read_text())["max_position_embeddings"]
    work = Path(args.work)
    episodes = work / "episodes-all-tasks.jsonl"
    tasks = teacher_recipe("tiny").episode_tasks
    if not episodes.is_file():
        tokenizer = AutoTokenizer.from_pretrained(teacher)
        docs = episode_documents(tokenizer, FillerTokens.build(tokenizer, iter_documents(demo.TRAIN_DATA)),
                                 demo.EPISODES, trained, recipe=teacher_recipe("tiny"))
        episodes.parent.mkdir(parents=True, exist_ok=True)
        episodes.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    conv = Conversion(teacher, work / "hybrid", load_recipe("demo"), data=[demo.TRAIN_DATA, str(episodes)],
                      device="cpu", eval_data=demo.EVAL_DATA)
    convert(conv)  # all four stages
    models = {"all-tasks-episodes-after-distill": conv.stage_dir("distill") / "model",
              "all-tasks-episodes-after-finetune": conv.out}
    config = EvalConfig(models=[str(p) for p in models.values()], out=str(work / "eval"), suites=demo.TASKS,
                        lengths=[trained], depths=[0.1, 0.5, 0.9], samples=8, device="cpu", data=demo.EVAL_DATA,
                        tokenizer=str(teacher))
    run_eval(config)
    entries = json.loads((work / "eval" / "report.json").read_text())["results"]
    names = list(dict.fromkeys(e["model"] for e in entries))
    rows = [{"model": label, "episode_tasks": tasks, "stages": "align, select, distill" + (", finetune" if "finetune"
             in label else ""), **{t: mean_over_depths(entries, name, t, "exact_match", trained) for t in demo.TASKS}}
            for label, name in zip(models, names)]
    ours = json.loads((Path(args.demo) / "report" / "report.json").read_text())["results"]
    for model, label in (("hybrid", "demo (episodes without MQAR, after distill)"), ("teacher-tiny", "teacher")):
        rows.append({"model": label, "episode_tasks": demo.EPISODE_TASKS if model == "hybrid" else None,
                     **{t: mean_over_depths(ours, model, t, "exact_match", trained) for t in demo.TASKS}})
    record = {"what": __doc__.splitlines()[0], "length": trained, "samples": 8, "depths": [0.1, 0.5, 0.9],
              "device": "cpu", "threads": torch.get_num_threads(), "seed": 0, "demo": str(args.demo), "rows": rows,
              **provenance()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()

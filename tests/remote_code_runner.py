"""Run by tests/test_hub.py in a fresh interpreter that cannot import hf_earlyexit (`python -S`, so the editable
install's `.pth` finder never runs, plus a `sys.meta_path` block against any other install). Loads remote-code
checkpoints with `trust_remote_code=True` and saves their outputs.

Usage: python -S remote_code_runner.py job.json
job.json: {"inputs": path, "sources": [dir or repo id], "auto_classes": [...], "call_kwargs": [...],
           "compared_outputs": [...], "output": path, "pipeline": {"texts": [...], "kwargs": {...}} or null}
"""

import importlib.abc
import json
import sys


class _BlockHfEarlyexit(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] == "hf_earlyexit":
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked by the remote-code test)")
        return None


sys.meta_path.insert(0, _BlockHfEarlyexit())


def main(job_path):
    try:
        import hf_earlyexit  # noqa: F401
    except ModuleNotFoundError:
        importable = False
    else:
        importable = True

    import torch
    import transformers

    torch.set_num_threads(1)  # as the test process (conftest.py): outputs are compared bit for bit
    job = json.load(open(job_path))
    inputs = torch.load(job["inputs"])
    results, report = {}, {"hf_earlyexit_importable": importable, "models": []}
    for source in job["sources"]:
        config = transformers.AutoConfig.from_pretrained(source, trust_remote_code=True)
        report["models"].append({"source": source, "class": type(config).__name__, "module": type(config).__module__})
        for auto_class in job["auto_classes"]:
            model = getattr(transformers, auto_class).from_pretrained(source, trust_remote_code=True).eval()
            report["models"].append(
                {
                    "source": source,
                    "auto_class": auto_class,
                    "class": type(model).__name__,
                    "module": type(model).__module__,
                }
            )
            outputs = []
            with torch.no_grad():
                for kwargs in job["call_kwargs"]:
                    out = model(**inputs, **kwargs)
                    outputs.append({name: getattr(out, name) for name in job["compared_outputs"]})
            results[f"{source}|{auto_class}"] = outputs
    pipe_job = job.get("pipeline")
    if pipe_job:
        for source in job["sources"]:
            # no task: transformers takes the only one declared in the checkpoint's `custom_pipelines`
            predictor = transformers.pipeline(model=source, trust_remote_code=True)
            report["models"].append(
                {"source": source, "pipeline": type(predictor).__name__, "module": type(predictor).__module__}
            )
            report.setdefault("pipeline_results", {})[source] = predictor(pipe_job["texts"], **pipe_job["kwargs"])
    report["loaded_hf_earlyexit_modules"] = sorted(name for name in sys.modules if name.startswith("hf_earlyexit"))
    torch.save(results, job["output"])
    # token-classification results hold numpy scalars
    print("REPORT " + json.dumps(report, default=lambda value: value.item()))


if __name__ == "__main__":
    main(sys.argv[1])

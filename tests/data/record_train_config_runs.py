"""Record the pre-refactor loop's numbers (run once, with the keyword-argument train())."""
import json, sys, tempfile
from pathlib import Path
from lmlab.train.spikes import Jolt, SpikePolicy
from lmlab.train.loop import train, NonFiniteLossError

sys.path.insert(0, "tests")
from test_train_config import RUNS, _spec, _model, _ids, _summary  # noqa


def run(name):
    opts, model_kw, interrupt = _spec(name)
    if "spike" in opts:
        opts["spike"] = SpikePolicy(**opts["spike"])
    if "jolt" in opts:
        opts["jolt"] = Jolt(**opts["jolt"])
    for key in ("batch_ramp", "betas"):
        if key in opts:
            opts[key] = tuple(opts[key])
    tr, va = _ids()
    calls = []
    model = _model(model_kw)
    if interrupt is not None:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "ckpt.pt"
            def crash(t, loss):
                if t == interrupt:
                    raise KeyboardInterrupt
            try:
                train(model, tr, va, checkpoint_path=path, callback=crash, **opts)
            except KeyboardInterrupt:
                pass
            model = _model(model_kw, seed=99)  # resumed into a differently initialised model
            h = train(model, tr, va, checkpoint_path=path, resume=True, callback=lambda t, l: calls.append([t, l]), **opts)
    else:
        try:
            h = train(model, tr, va, callback=lambda t, l: calls.append([t, l]), **opts)
        except NonFiniteLossError as err:
            return dict(error=str(err))
    return _summary(h, model, calls)


out = {name: run(name) for name in RUNS}
Path("tests/data/train_config_runs.json").write_text(json.dumps(out, sort_keys=True, separators=(",", ":")) + "\n")
for k, v in out.items():
    print(k, len(v.get("train_loss", [])), v.get("error"), v.get("spikes"), v.get("skipped_steps"), v.get("rollbacks"), v.get("stopped_at"), v.get("batch_size", [])[:12])

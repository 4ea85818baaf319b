"""dvc.yaml declares exactly the ltpipe modules each stage imports: too few and a code change is missed by the
cache, too many and (for example) a stage-2 edit would retrain stage 1."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
VALIDATION_ONLY = {"ltpipe/config.py", "ltpipe/schema.py", "ltpipe/validation.py"}


def imported_files(script: str) -> set:
    # Import the stage script as a module (its __main__ block does not run) in a fresh interpreter.
    module = script[:-3].replace("/", ".")
    code = (f"import json, sys, {module}; print(json.dumps(sorted(m.__file__ for n, m in sys.modules.items() "
            f"if n.startswith('ltpipe') and n != 'ltpipe')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    files = {str(Path(f).resolve().relative_to(ROOT)) for f in json.loads(out.stdout)}
    # These only parse and validate params (the values a stage uses come from params.yaml, which DVC tracks per
    # section, and tests/test_schema.py keeps every key in params.yaml), so no stage depends on them.
    return files - VALIDATION_ONLY


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_declares_exactly_the_modules_it_imports(name):
    deps = [d for d in STAGES[name]["deps"] if d.startswith("ltpipe/")]
    script = next(d for d in STAGES[name]["deps"] if d.startswith("stages/"))
    used = imported_files(script)
    covered = {f for f in used if any(f == d or f.startswith(d + "/") for d in deps)}
    assert used == covered, f"{name}: imported but not declared: {sorted(used - covered)}"
    unused = [d for d in deps if not any(f == d or f.startswith(d + "/") for f in used)]
    assert not unused, f"{name}: declared but not imported: {unused}"
    for d in deps:
        if (ROOT / d).is_dir():
            files = {str(p.relative_to(ROOT)) for p in (ROOT / d).rglob("*.py")}
            assert files <= used, f"{name}: folder dep {d} holds modules the stage does not use: {files - used}"


def test_stage1_does_not_depend_on_stage2_or_evaluate_code():
    deps = STAGES["train_backbone"]["deps"]
    assert not any(d.startswith(("ltpipe/classifier", "ltpipe/evaluate", "ltpipe/metrics", "ltpipe/stage2"))
                   for d in deps)
    assert set(STAGES["train_backbone"]["params"]).isdisjoint({"stage2", "evaluate"})

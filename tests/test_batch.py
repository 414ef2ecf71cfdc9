"""taidpt batch (a file of taidpt commands in one process) and taidpt ensemble --rate-from."""
import json

import pytest

from taidpt.cli import main
from taidpt.cli.batch import read_commands
from taidpt.cli.ensemble import chosen_rate


def test_commands_run_in_order_and_comments_are_skipped(tmp_path, capsys):
    plan = tmp_path / "plan.txt"
    plan.write_text("# a comment\n\nlist\nlist  # again\n")
    assert read_commands(str(plan)) == [["list"], ["list"]]
    assert main(["batch", str(plan)]) == 0
    assert capsys.readouterr().out.count("trainers:") == 2


def test_the_first_failure_stops_the_batch_with_its_line(tmp_path, capsys):
    plan = tmp_path / "plan.txt"
    plan.write_text(f"list\nensemble {tmp_path}/a {tmp_path}/b --rate 0.5\nlist\n")
    assert main(["batch", str(plan)]) == 1
    err = capsys.readouterr()
    assert err.out.count("trainers:") == 1  # the third command did not run
    assert "batch command 2/3" in err.err and "(exit 2)" in err.err and "ensemble" in err.err
    plan.write_text("train --no-such-flag\n")
    assert main(["batch", str(plan)]) == 1
    plan.write_text("list 'unclosed\n")
    assert main(["batch", str(plan)]) == 2 and "line 1" in capsys.readouterr().err


def test_rate_from_reads_the_val_choice(tmp_path):
    path = tmp_path / "ensemble_val.json"
    path.write_text(json.dumps({"split": "val", "best_rate": 0.3, "best_mAP": 70.0}))
    assert chosen_rate(str(path)) == 0.3
    path.write_text(json.dumps({"split": "test", "best_rate": 0.3}))
    with pytest.raises(ValueError, match="not an ensemble_val.json"):
        chosen_rate(str(path))

"""run.py's option handling for the workload selection (no services run)."""

from __future__ import annotations

import pytest

import run


def settings(*argv: str) -> run.Settings:
    return run.settings_from(run.build_parser().parse_args(list(argv)))


def test_only_takes_comma_lists_and_aliases_in_run_order() -> None:
    assert run.parse_only(None) == run.ALL_WORKLOADS
    assert run.parse_only(["user-thumbs,user-tiny"]) == ("user-tiny", "user-thumbnails")
    assert run.parse_only(["user-tiny", "tiny, limits"]) == ("limits", "tiny", "user-tiny")
    with pytest.raises(SystemExit, match="unknown workload 'user-compress'"):
        run.parse_only(["user-tiny,user-compress"])


def test_user_counts_follow_their_inputs_unless_given() -> None:
    st = settings("--quick", "--only", "user-tiny,user-thumbs", "--count", "tiny=50")
    assert st.workloads == ("user-tiny", "user-thumbnails")
    assert st.counts["user-tiny"] == 50 and st.counts["user-thumbnails"] == 12
    assert run.input_counts(st) == {"tiny": 50, "thumbnails": 12}
    st = settings("--only", "tiny,user-tiny", "--count", "user-tiny=30000")
    assert st.counts["tiny"] == 20000 and st.counts["user-tiny"] == 30000
    # One input set serves both: large enough for the larger count.
    assert run.input_counts(st) == {"tiny": 30000}
    st = settings("--only", "user-latency")
    assert run.input_counts(st) == {"tiny": 20000}

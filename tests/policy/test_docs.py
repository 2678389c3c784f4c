"""docs/policy.md lists every built-in secret and mandatory write-deny."""

from pathlib import Path

from blastwall.policy import defaults

DOC = (Path(__file__).resolve().parents[2] / "docs" / "policy.md").read_text()


def test_every_builtin_list_entry_is_documented():
    for entry in (*defaults.BUILTIN_SECRETS, *defaults.MANDATORY_WRITE_DENY, *defaults.MANDATORY_HOME_WRITE_DENY):
        assert f"`{entry}`" in DOC, entry

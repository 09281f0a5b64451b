"""Every command's --help renders (argparse formats help text lazily, so a stray '%' only fails
when a user asks for help)."""

import pytest

from rlhflab.cli import build_parser, main


def commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    out = []
    for name, p in sub.choices.items():
        out.append([name])
        for a in p._actions:
            if a.__class__.__name__ == "_SubParsersAction":
                out += [[name, child] for child in a.choices]
    return out


@pytest.mark.parametrize("argv", [[]] + commands(), ids=lambda a: " ".join(a) or "rlhflab")
def test_help_renders(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out

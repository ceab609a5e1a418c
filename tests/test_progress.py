import io

from hebbret.progress import progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(file, quiet=False):
    with progress(total=1000, desc="embed", unit="img", file=file, quiet=quiet) as bar:
        for _ in range(1000):
            bar.update(1)
    return file.getvalue()


def test_off_a_terminal_the_bar_is_a_few_plain_lines():
    text = run(io.StringIO())
    assert "\r" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3 and lines[-1].startswith("embed: 100%")
    assert "1000/1000" in lines[-1]


def test_on_a_terminal_it_redraws_and_quiet_writes_nothing():
    assert "\r" in run(FakeTerminal())
    assert run(io.StringIO(), quiet=True) == run(FakeTerminal(), quiet=True) == ""

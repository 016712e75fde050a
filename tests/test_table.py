"""The one text-table formatter used by summaries, reports and the command line."""
from __future__ import annotations

from graphopt.table import format_table


def test_columns_are_padded_to_the_widest_cell():
    text = format_table([("conv1", "12"), ("fc", "1,024")], ("node", "params"))
    assert text.splitlines() == ["node   params", "conv1  12", "fc     1,024"]


def test_right_aligned_columns_and_rule():
    text = format_table([("conv1", "12"), ("fc", "1,024")], ("node", "params"), right=(1,),
                        rule=True)
    assert text.splitlines() == ["node   params", "-----  ------", "conv1      12",
                                 "fc      1,024"]


def test_no_header_and_no_rows():
    assert format_table([("a", ""), ("bb", "c")]) == "a\nbb  c"
    assert format_table([]) == ""

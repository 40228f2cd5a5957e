"""Plain-Python tests of the counter logic: `python3 -m unittest` (no wasm, no wraft needed)."""

import json
import unittest

from counter import AppError, Counter


def cmd(**v) -> bytes:
    return json.dumps(v).encode()


class CounterTest(unittest.TestCase):
    def test_add_accumulates(self):
        c = Counter()
        c.apply(cmd(op="add", n=2))
        self.assertEqual(json.loads(c.apply(cmd(op="add", n=3))), {"count": 5})

    def test_bad_command_is_an_application_error(self):
        with self.assertRaises(AppError):
            Counter().apply(cmd(op="nope"))
        with self.assertRaises(AppError):
            Counter().apply(cmd(op="add", n="x"))

    def test_snapshot_restore_answers_the_same(self):
        c = Counter()
        c.apply(cmd(op="add", n=7))
        c.apply(cmd(op="roll"))
        r = Counter.restore(c.snapshot())
        self.assertEqual(r.query(cmd(op="get")), c.query(cmd(op="get")))
        self.assertEqual(r.snapshot(), c.snapshot())


if __name__ == "__main__":
    unittest.main()

"""Our progress lines on the console instead of Ray Data's: its INFO logs and progress bars go to Ray's log
files while a split or a backtest runs on Ray Data (issue 38: the demo's console)."""
from __future__ import annotations


class QuietRayData:
    """Ray Data's INFO lines and progress bars stay in Ray's log files (ray-data.log) while the block runs;
    warnings and errors still reach the console. The DataContext settings it needs are restored after, so
    nothing leaks into later Ray Data work in the same process."""

    def __init__(self, **settings):
        self.settings = settings

    def __enter__(self):
        import logging

        import ray.data

        self.context = ray.data.DataContext.get_current()
        self.saved = {k: getattr(self.context, k) for k in self.settings}
        for k, v in self.settings.items():
            setattr(self.context, k, v)
        self.handlers = [(h, h.level) for h in logging.getLogger("ray.data").handlers if h.name == "console"]
        for handler, _ in self.handlers:
            handler.setLevel(logging.WARNING)
            handler.addFilter(_not_our_choice)
        return self.context

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            setattr(self.context, k, v)
        for handler, level in self.handlers:
            handler.setLevel(level)
            handler.removeFilter(_not_our_choice)
        return False


def _not_our_choice(record) -> bool:
    """Drop Ray Data's warning that progress bars are off: the split turned them off for its own lines."""
    return "Progress bars disabled" not in record.getMessage()

"""Shared by the bench tests: a stand-in for the progress bar a section runner drives."""


class Bar:
    """The progress bar a section runner drives, counting its steps."""

    def __init__(self):
        self.steps = 0

    def update(self, n):
        self.steps += n

    def set_description(self, text):
        pass

"""Errors raised for bad user input: each message says what is wrong and how to fix it."""


class VortexError(Exception):
    """An error caused by the user's input, with a message saying how to fix it."""


class DataError(VortexError):
    """A data set that vortex cannot use as given."""


class SplitError(VortexError):
    """A model that cannot be split where asked, or a split that does not exist."""


class ProfileError(VortexError):
    """Features or labels that do not allow a profile (NaN, too few samples, wrong classes)."""


class AttackError(VortexError):
    """An inversion attack that cannot run as asked (aux data, split outputs, options)."""


class HubError(VortexError):
    """A Hub repo or push that vortex cannot use: not found, not a vortex checkpoint, unsafe, unreachable."""

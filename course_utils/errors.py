"""The exceptions the course raises for mistakes a learner can fix: `CourseError` and four kinds of it; one warning."""


class CourseError(Exception):
    """A learner-fixable problem; the message says what went wrong and how to fix it."""


class DataNotFoundError(CourseError, FileNotFoundError):
    """No local copy of a dataset could be found and none could be downloaded."""


class CorruptPackError(CourseError):
    """A dataset pack on disk is truncated, corrupt or has the wrong layout."""


class CheckpointError(CourseError):
    """A checkpoint is missing or does not fit the model it is loaded into."""


class TrainingDivergedError(CourseError, FloatingPointError):
    """The training loss became NaN or infinite."""


class LearnedNothingWarning(UserWarning):
    """A run ended with a training loss no better than always predicting the mean training image."""

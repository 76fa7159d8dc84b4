"""The exceptions core/ raises. Each carries a message a radiologist or technologist can act on."""


class RadTriageError(Exception):
    """Base class: `str(error)` is a complete, human sentence (no traceback needed)."""


class XRayDecodeError(RadTriageError):
    """The file is not an X-ray image we can read (empty, corrupt, unsupported, too large...)."""


class RegistryError(RadTriageError):
    """registry.json is malformed or names something that does not exist."""


class UnknownConditionError(RadTriageError):
    """A condition code that RadTriage does not know."""


class BodyPartMismatchError(RadTriageError):
    """The image's body part (DICOM BodyPartExamined) is not one the condition applies to."""

# Types of cortex/__init__.py, whose SDK names load lazily (see its docstring). Keep the
# two in step: a name missing here is an error for every type-checked user.
from cortex.errors import Conflict as Conflict
from cortex.errors import CortexError as CortexError
from cortex.errors import IllegalTransition as IllegalTransition
from cortex.errors import InvalidArgument as InvalidArgument
from cortex.errors import NotFound as NotFound
from cortex.errors import PermissionDenied as PermissionDenied
from cortex.errors import RemoteError as RemoteError
from cortex.errors import Unavailable as Unavailable
from cortex.sdk import Client as Client
from cortex.sdk import ClientConfig as ClientConfig
from cortex.sdk import Result as Result
from cortex.sdk import SyncClient as SyncClient

__version__: str
__all__: list[str]

"""The plugin API: one hook, called once per plugin, through which it registers its formats.

Built-in formats and third-party ones both arrive here through the `lmarc` entry-point group
(see `archiver.plugins`). A format is any object with the `Format` shape of `archiver.formats`.
"""

import pluggy

hookspec = pluggy.HookspecMarker("lmarc")
hookimpl = pluggy.HookimplMarker("lmarc")


@hookspec
def register_formats(register):
    """Call `register(format)` for every file format this plugin handles."""

# -*- coding: utf-8 -*-
# Copyright: (c) 2026, vpnguard maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Save files before the first change and put them back byte for byte.

A snapshot records whether the path existed, whether it was a symlink (and
to what), its bytes, mode and owner. It is taken once, before the first
change, and kept across later runs, so that removal restores what the host
had before the collection came, not an intermediate state.

Given the AnsibleModule (module=), files are put in place with its
atomic_move(), which keeps the SELinux context the path had (or gives a new
path its policy default, as matchpathcon says) where a plain rename would
leave the temporary file's, inherited from the directory: /etc/resolv.conf
would go from net_conf_t to etc_t on EL. A snapshot also records the context
and restore() puts it back. Without a module (macOS, tests) a plain rename.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import json
import os
import tempfile


def _first_missing_directory(path):
    missing = None
    directory = os.path.dirname(path)
    while directory and directory != '/' and not os.path.isdir(directory):
        missing = directory
        directory = os.path.dirname(directory)
    return missing


def _selinux(module):
    return module is not None and module.selinux_enabled()


def _replace(path, data, mode, module, owner=None):
    """Atomically make path (a file, a symlink or nothing) a regular file holding data (bytes).

    With a module, its atomic_move puts the file in place: it keeps the SELinux
    context path had, or gives a new path the policy's default. Mode and owner
    are set before the move, so that the file never shows others, and again
    after it, as atomic_move copies the old file's.
    """
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix='.vpnguard.')
    with os.fdopen(fd, 'wb') as f:
        f.write(data)
    if owner is not None:
        os.chown(tmp, *owner)
    os.chmod(tmp, mode)
    if os.path.islink(path):
        # The link's target keeps its own context; the new file gets the
        # policy's default for path, not the target's.
        os.remove(path)
    if module is None:
        os.rename(tmp, path)
        return
    module.atomic_move(tmp, path)
    if owner is not None:
        os.chown(path, *owner)
    os.chmod(path, mode)


def capture(path, module=None):
    entry = {'path': path, 'exists': os.path.lexists(path)}
    if not entry['exists']:
        # Directories made to hold the file go again on restore.
        entry['missing_directory'] = _first_missing_directory(path)
        return entry
    if _selinux(module):
        entry['selinux'] = ':'.join(module.selinux_context(path))
    if os.path.islink(path):
        entry['symlink'] = os.readlink(path)
        return entry
    st = os.stat(path)
    with open(path, 'rb') as f:
        entry['content'] = base64.b64encode(f.read()).decode('ascii')
    entry.update(mode=st.st_mode & 0o7777, uid=st.st_uid, gid=st.st_gid)
    return entry


def restore(entry, module=None):
    """Put one captured path back exactly as it was, SELinux context included when a module is given."""
    path = entry['path']
    # A regular file is replaced in place below, never left missing; anything else goes first.
    replaced_in_place = 'content' in entry and os.path.isfile(path) and not os.path.islink(path)
    if os.path.lexists(path) and (os.path.islink(path) or not os.path.isdir(path)) and not replaced_in_place:
        os.remove(path)
    if not entry['exists']:
        _remove_made_directories(os.path.dirname(path), entry.get('missing_directory'))
        return
    if 'symlink' in entry:
        os.symlink(entry['symlink'], path)
    else:
        _replace(path, base64.b64decode(entry['content']), entry['mode'], module, (entry['uid'], entry['gid']))
    if entry.get('selinux') and _selinux(module):
        module.set_context_if_different(path, entry['selinux'].split(':', 3), False)


def _remove_made_directories(directory, topmost):
    if not topmost:
        return
    while True:
        remove_if_empty(directory)
        if directory == topmost or not directory.startswith(topmost):
            return
        directory = os.path.dirname(directory)


def remove_if_empty(directory):
    try:
        os.rmdir(directory)
    except OSError:
        pass  # not empty or not there: not only ours to remove


def load_json(path):
    """A JSON object saved by save(); None when missing, unreadable or not an object."""
    try:
        with open(path) as f:
            document = json.load(f)
    except (IOError, OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def load(manifest):
    """The saved entries by path; None when the manifest is missing or corrupt."""
    entries = load_json(manifest)
    if entries is None or not all(isinstance(e, dict) and 'path' in e for e in entries.values()):
        return None
    return entries


def save(path, document, module=None):
    """Write a JSON object atomically, readable by root only."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o700)
    _replace(path, json.dumps(document, indent=1, sort_keys=True).encode('utf-8'), 0o600, module)


def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except (IOError, OSError):
        return None


def write_text(path, content, mode=0o644, module=None):
    """Replace path (a file or a symlink) with a regular file holding content."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    _replace(path, content.encode('utf-8'), mode, module)


class Link(str):
    """Wanted content of a path that must be a symbolic link to this target."""


def holds(path, content):
    """Whether path already is what content asks: text, a Link, or None for absent."""
    if content is None:
        return not os.path.lexists(path)
    if isinstance(content, Link):
        return os.path.islink(path) and os.readlink(path) == content
    return not os.path.islink(path) and read_text(path) == content


def sync(files, check_mode, own_directory=None, module=None):
    """Make each path hold its content (see holds); scripts (*.sh) are made executable.

    own_directory, a directory that is only ours, goes once the change leaves it empty;
    no other directory is ever removed. Returns the paths that differed, sorted; in check
    mode nothing is written. With module, files are moved into place by its atomic_move.
    """
    changed = [path for path in sorted(files) if not holds(path, files[path])]
    if check_mode:
        return changed
    for path in changed:
        content = files[path]
        if os.path.lexists(path) and (content is None or isinstance(content, Link)):
            os.remove(path)
        if isinstance(content, Link):
            if not os.path.isdir(os.path.dirname(path)):
                os.makedirs(os.path.dirname(path), 0o755)
            os.symlink(content, path)
        elif content is not None:
            write_text(path, content, 0o755 if path.endswith('.sh') else 0o644, module=module)
    if changed and own_directory:
        remove_if_empty(own_directory)
    return changed

#!/bin/sh
# Run the command as the owner of the mounted checkout (/workspace), so that what the pipeline
# writes (.dvc/tmp, data/, artifacts/, model_repository/) belongs to whoever cloned it: root,
# uid 1000 or any other uid. The container starts as root with only CAP_SETUID/CAP_SETGID
# (docker-compose.yml) and keeps nothing once it has switched.
set -eu
# Triton's admin key, drawn once into the control volume (mounted only by Triton and these
# containers): root writes it before switching, the volume being root's.
control=/run/imgcls-control
if [ -d "$control" ] && [ ! -s "$control/admin-key" ] && [ "$(id -u)" = 0 ]; then
  (umask 022 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' > "$control/admin-key.tmp" \
    && mv "$control/admin-key.tmp" "$control/admin-key")
fi
uid=$(stat -c %u /workspace)
gid=$(stat -c %g /workspace)
# IMGCLS_EXTRA_GID: a group the command also needs (the API's, whose capture store it files).
groups="--clear-groups"
if [ -n "${IMGCLS_EXTRA_GID:-}" ]; then groups="--groups=$IMGCLS_EXTRA_GID"; fi
if [ "$(id -u)" = 0 ] && [ "$uid" != 0 ]; then
  exec setpriv --reuid="$uid" --regid="$gid" "$groups" -- "$@"
fi
exec "$@"

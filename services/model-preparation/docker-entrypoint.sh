#!/bin/sh
# Run the command as the owner of the mounted checkout (/workspace), so that what the pipeline
# writes (.dvc/tmp, data/, artifacts/, model_repository/) belongs to whoever cloned it: root,
# uid 1000 or any other uid. The container starts as root with only CAP_SETUID/CAP_SETGID
# (docker-compose.yml) and keeps nothing once it has switched.
set -eu
uid=$(stat -c %u /workspace)
gid=$(stat -c %g /workspace)
if [ "$(id -u)" = 0 ] && [ "$uid" != 0 ]; then
  exec setpriv --reuid="$uid" --regid="$gid" --clear-groups -- "$@"
fi
exec "$@"

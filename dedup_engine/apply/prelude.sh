set -u
failed=0
fail() { printf 'dedup script: %s\n' "$*" >&2; failed=1; }
# No directory on the way to $1 is a symlink (one planted there would redirect the step).
plain() {
    p=
    rest=${1#/}
    while :; do
        case $rest in */*) part=${rest%%/*}; rest=${rest#*/} ;; *) return 0 ;; esac
        [ -n "$part" ] || continue
        p=$p/$part
        if [ -L "$p" ]; then fail "skipped, $p is a symlink: $1"; return 1; fi
    done
}
# Two names of two different regular files (not symlinks, not one file) with the same bytes.
same() {
    plain "$1" && plain "$2" || return 1
    [ -f "$1" ] && [ ! -L "$1" ] && [ -f "$2" ] && [ ! -L "$2" ] && ! [ "$1" -ef "$2" ] &&
        cmp -s -- "$1" "$2"
}
# Make directory $1 a component at a time where missing (mode 700: a copy moved from a private
# directory must not become readable); a symlink anywhere is refused.
make_dir() {
    p=
    rest=${1#/}/
    while [ -n "$rest" ]; do
        part=${rest%%/*}
        rest=${rest#*/}
        [ -n "$part" ] || continue
        p=$p/$part
        if [ -L "$p" ]; then fail "skipped, $p is a symlink"; return 1; fi
        [ -d "$p" ] || mkdir -m 700 -- "$p" || { fail "cannot create $p"; return 1; }
        if [ -L "$p" ] || [ ! -d "$p" ]; then fail "skipped, $p is not a directory"; return 1; fi
    done
}
aside() {  # keep victim tmp: check, then move the victim aside (never over another name)
    same "$1" "$2" || { fail "skipped, no longer a copy of $1: $2"; return 1; }
    if [ -e "$3" ] || [ -L "$3" ]; then fail "skipped, $3 exists: $2"; return 1; fi
    # -T: a directory someone makes at $3 meanwhile is not moved into.
    mv -n -T -- "$2" "$3" && [ ! -e "$2" ] && [ ! -L "$2" ] ||
        { fail "cannot set aside: $2"; return 1; }
}
back() {  # victim tmp: put the victim back, never over a file someone else put there
    if [ -e "$1" ] || [ -L "$1" ]; then
        fail "ROLLBACK FAILED: $1 now holds another file; the original is at $2"; return
    fi
    mv -n -T -- "$2" "$1" && [ ! -e "$2" ] || fail "ROLLBACK FAILED: the original of $1 is at $2"
}
do_delete() { aside "$@" || return 0; rm -f -- "$3" || fail "cannot remove $3 (a copy of $1)"; }
do_hardlink() {
    aside "$@" || return 0
    if ! ln -T -- "$1" "$2"; then fail "cannot link: $2"; back "$2" "$3"; return 0; fi
    if [ "$1" -ef "$2" ]; then rm -f -- "$3" || fail "cannot remove $3 (a copy of $1)"
    else fail "$2 is not $1; the original is at $3"; fi
}
do_symlink() {
    aside "$@" || return 0
    if ! ln -s -T -- "$1" "$2"; then fail "cannot symlink: $2"; back "$2" "$3"; return 0; fi
    if [ -L "$2" ] && [ "$1" -ef "$2" ]; then
        rm -f -- "$3" || fail "cannot remove $3 (a copy of $1)"
    else fail "$2 is not a link to $1; the original is at $3"; fi
}
do_reflink() {  # keep victim size: the kernel compares the bytes itself
    same "$1" "$2" || { fail "skipped, no longer a copy of $1: $2"; return 0; }
    case "$1" in *[[:space:]]*) fail "skipped, xfs_io cannot take the name: $1"; return 0;; esac
    xfs_io -r -c "dedupe $1 0 0 $3" -- "$2" >/dev/null || fail "reflink failed: $2"
}
do_move() {  # keep victim target target-dir
    same "$1" "$2" || { fail "skipped, no longer a copy of $1: $2"; return 0; }
    if [ -e "$3" ] || [ -L "$3" ]; then fail "skipped, $3 exists"; return 0; fi
    make_dir "$4" || return 0
    mv -n -T -- "$2" "$3" && [ ! -e "$2" ] || fail "cannot move: $2"
}

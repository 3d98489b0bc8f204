#!/bin/bash
# unlockd dracut module (RHEL, Fedora, and any systemd-based dracut): puts Node.js, the agent
# bundle, its config, host keys and pinned CAs into the image, and a service that answers
# systemd's ask-password requests for LUKS volumes with the key released by the escrow server
# (as clevis's dracut module does), while the typed passphrase keeps working.
# What is copied comes from `unlockd initramfs check --flavour dracut --format lines`.
# Every problem stops dracut here, never at boot.
# shellcheck disable=SC2154 # initdir, moddir, systemdutildir, systemdsystemunitdir come from dracut

UNLOCKD_CONFDIR=/etc/unlockd
# The functions shared with the initramfs-tools flavour and the boot script (installed by install.sh).
UNLOCKD_FUNCTIONS=/usr/lib/unlockd/initramfs-functions

unlockd_conf() {
    if [[ ! -r $UNLOCKD_FUNCTIONS ]]; then
        dfatal "unlockd: $UNLOCKD_FUNCTIONS is missing: install unlockd's initramfs hooks with initramfs-hooks/install.sh"
        exit 1
    fi
    # shellcheck source-path=SCRIPTDIR source=../../unlockd-functions.sh
    . "$UNLOCKD_FUNCTIONS"
    # Only UNLOCKD_NAME=value lines; the check below rejects anything else.
    UNLOCKD_NODE=""
    UNLOCKD_BUNDLE=""
    UNLOCKD_INITRAMFS=yes
    if [[ -e $UNLOCKD_CONFDIR/initramfs.conf ]]; then
        if ! unlockd_conf_valid "$UNLOCKD_CONFDIR/initramfs.conf"; then
            dfatal "unlockd: $UNLOCKD_CONFDIR/initramfs.conf may only hold UNLOCKD_NAME=value lines"
            exit 1
        fi
        # shellcheck disable=SC1091
        . "$UNLOCKD_CONFDIR/initramfs.conf"
    fi
}

# 0: include when the host is enrolled; 1: not enrolled (or switched off), nothing to add.
check() {
    unlockd_conf
    case "$UNLOCKD_INITRAMFS" in
        n | no | N | NO | 0 | false) return 1 ;;
    esac
    if [[ ! -e $UNLOCKD_CONFDIR/agent.json ]]; then
        dwarn "unlockd: $UNLOCKD_CONFDIR/agent.json does not exist (host not enrolled): not adding the agent"
        return 1
    fi
    return 0
}

depends() {
    # crypt: systemd-cryptsetup asks for the passphrase; network: dracut's network module
    # (network-legacy, NetworkManager or systemd-networkd) brings the interface up for the agent.
    echo crypt systemd network
    return 0
}

unlockd_die() {
    dfatal "unlockd: $*"
    dfatal "unlockd: fix the above and run dracut again (or set UNLOCKD_INITRAMFS=no in $UNLOCKD_CONFDIR/initramfs.conf)"
    exit 1
}

install() {
    local node bundle plan kind src dest tab
    unlockd_conf
    node="${UNLOCKD_NODE:-$(command -v node || true)}"
    [[ -n $node ]] || unlockd_die "Node.js was not found: install nodejs 18.19 or newer, or set UNLOCKD_NODE=/path/to/node in $UNLOCKD_CONFDIR/initramfs.conf"
    [[ -x $node ]] || unlockd_die "Node.js $node is not executable: fix UNLOCKD_NODE in $UNLOCKD_CONFDIR/initramfs.conf"
    bundle="${UNLOCKD_BUNDLE:-/usr/lib/unlockd/unlockd-agent.mjs}"
    [[ -f $bundle ]] || unlockd_die "the agent bundle $bundle is missing: install unlockd, or set UNLOCKD_BUNDLE"

    plan="$("$node" "$bundle" initramfs check --flavour dracut --config "$UNLOCKD_CONFDIR" --node "$node" --bundle "$bundle" --format lines)" \
        || unlockd_die "unlockd initramfs check failed (the reasons are listed above)"
    [[ -n $plan ]] || unlockd_die "unlockd initramfs check printed no plan"

    mkdir -p "$initdir/etc/unlockd" || unlockd_die "cannot create $initdir/etc/unlockd"
    chmod 0700 "$initdir/etc/unlockd" || unlockd_die "cannot chmod $initdir/etc/unlockd"
    : > "$initdir/etc/unlockd/volumes" || unlockd_die "cannot write the volume map"
    tab=$'\t'
    while IFS="$tab" read -r kind src dest; do
        case "$kind" in
            exec) inst_binary "$src" "$dest" || unlockd_die "cannot copy $src (and its libraries) into the image" ;;
            file | secret)
                inst_simple "$src" "$dest" || unlockd_die "cannot copy $src into the image"
                if [[ $kind == secret ]]; then chmod 0600 "$initdir$dest" || unlockd_die "cannot chmod $dest"; fi
                ;;
            volume) printf '%s %s\n' "$src" "$dest" >> "$initdir/etc/unlockd/volumes" || unlockd_die "cannot write the volume map" ;;
            *) unlockd_die "unexpected line in the plan: $kind" ;;
        esac
        [[ $kind == volume ]] || [[ -e $initdir$dest ]] || unlockd_die "$dest is missing from the image after copying"
    done <<< "$plan"
    [[ -s $initdir/etc/unlockd/volumes ]] || unlockd_die "agent.json has no LUKS volume to answer for"

    inst_multiple cat cryptsetup grep mkdir rm sed sleep timeout tr \
        || unlockd_die "cannot install the tools the answering script needs"
    inst_multiple -o "$systemdutildir/systemd-reply-password" /lib/systemd/systemd-reply-password /usr/lib/systemd/systemd-reply-password
    [[ -x $initdir$systemdutildir/systemd-reply-password ]] || [[ -x $initdir/lib/systemd/systemd-reply-password ]] || [[ -x $initdir/usr/lib/systemd/systemd-reply-password ]] \
        || unlockd_die "systemd-reply-password is not in the image"
    # The answering script sources the shared functions from the same path in the image.
    inst_simple "$UNLOCKD_FUNCTIONS" "$UNLOCKD_FUNCTIONS" || unlockd_die "cannot install $UNLOCKD_FUNCTIONS"
    inst_script "$moddir/unlockd-askpass.sh" /usr/libexec/unlockd-askpass || unlockd_die "cannot install the answering script"
    inst_simple "$moddir/unlockd-askpass.service" "$systemdsystemunitdir/unlockd-askpass.service" || unlockd_die "cannot install unlockd-askpass.service"
    inst_simple "$moddir/unlockd-askpass.path" "$systemdsystemunitdir/unlockd-askpass.path" || unlockd_die "cannot install unlockd-askpass.path"
    "${SYSTEMCTL:-systemctl}" -q --root "$initdir" add-wants cryptsetup.target unlockd-askpass.path || unlockd_die "cannot enable unlockd-askpass.path"
    inst_hook cleanup 90 "$moddir/unlockd-cleanup.sh"
    # The agent needs the network even when nothing else in the initramfs does.
    echo "rd.neednet=1" > "$initdir/etc/cmdline.d/90unlockd.conf" || unlockd_die "cannot write etc/cmdline.d/90unlockd.conf"
    dracut_need_initqueue
}

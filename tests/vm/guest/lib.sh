# shellcheck shell=sh disable=SC2034 # variables here are for the scripts that source it
# Helpers shared by the guest's /init and the scenarios (busybox sh; sourced, not run).
#
# Results go to file descriptor 3, the second serial port, which the host writes to a file;
# kernel messages stay on the first. Everything the host reads is in blocks:
#
#   === BEGIN <name> ===
#   <output of one command, stdout and stderr>
#   [exit status N]          (only when the command failed)
#   === END <name> ===
#
# and the run ends with `=== DONE ===` when it went through.

EXPORTER_LOG=/tmp/exporter.log
VM_COUNT=/tmp/vm-reader.count

# emit NAME COMMAND...: runs COMMAND and writes its output as block NAME.
emit() {
    _name=$1
    shift
    if "$@" >/tmp/emit.out 2>&1; then _rc=0; else _rc=$?; fi
    {
        echo "=== BEGIN $_name ==="
        cat /tmp/emit.out
        # Keep the END marker on its own line whatever the command printed last.
        [ -z "$(tail -c 1 /tmp/emit.out)" ] || echo
        [ "$_rc" = 0 ] || echo "[exit status $_rc]"
        echo "=== END $_name ==="
    } >&3
    return 0
}

# note NAME TEXT...: a block holding TEXT.
note() {
    _name=$1
    shift
    emit "$_name" echo "$*"
}

# fatal TEXT: says why the run cannot go on, with the logs that usually explain it, and
# powers off without the DONE marker so the host reports a failure.
fatal() {
    note fatal "$*"
    emit fatal-vswitchd-log cat /var/log/openvswitch/ovs-vswitchd.log
    emit fatal-dmesg dmesg
    poweroff_now
}

poweroff_now() {
    trap - EXIT
    # Closing the port waits until the UART has sent everything queued.
    exec 3>&-
    sync
    poweroff -f
    sleep 30
}

uptime_s() { cut -d. -f1 /proc/uptime; }

# wait_for SECONDS COMMAND...: polls COMMAND every 0.2 s until it succeeds; fails on timeout.
wait_for() {
    _deadline=$(($(uptime_s) + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$(uptime_s)" -lt "$_deadline" ] || return 1
        sleep 0.2
    done
}

ovs_start_db() {
    mkdir -p /run/openvswitch /var/log/openvswitch /etc/openvswitch
    ovsdb-tool create /etc/openvswitch/conf.db /usr/share/openvswitch/vswitch.ovsschema
    ovsdb-server /etc/openvswitch/conf.db --remote=punix:/run/openvswitch/db.sock \
        --pidfile --detach --no-chdir --log-file
    # Pitfall: `init` followed by `wait-until ... cur_cfg>=1` never returns; nothing needs it.
    ovs-vsctl --no-wait init
    # Datapath flows must outlive the test's pauses so their counters can be dumped.
    ovs-vsctl --no-wait set Open_vSwitch . other_config:max-idle=120000
}

# handler_threads_line FIRST_LINE: the n-handler-threads line logged at or after FIRST_LINE.
handler_threads_line() {
    tail -n +"$1" /var/log/openvswitch/ovs-vswitchd.log | grep -m 1 'n-handler-threads to'
}

# ovs_start_switch [BLOCK]: starts ovs-vswitchd and checks that it runs upcall handler threads. Started in the first
# ~10 s of uptime, OVS 3.1 (per-CPU upcall dispatch) overrides n-handler-threads to 0 and
# loses every upcall for good, so this waits for uptime 10 s and fails loudly otherwise.
ovs_start_switch() {
    while [ "$(uptime_s)" -lt 10 ]; do sleep 0.2; done
    _log=/var/log/openvswitch/ovs-vswitchd.log
    _first=$(($( (cat "$_log" 2>/dev/null || true) | wc -l) + 1))
    ovs-vswitchd unix:/run/openvswitch/db.sock --pidfile --detach --no-chdir --log-file \
        || fatal "ovs-vswitchd did not start"
    wait_for 30 handler_threads_line "$_first" \
        || fatal "ovs-vswitchd logged no n-handler-threads line within 30 s (no bridge?)"
    _line=$(handler_threads_line "$_first")
    case $_line in
        *"n-handler-threads to "[1-9]*) ;;
        *) fatal "ovs-vswitchd has no upcall handlers, every upcall would be lost: $_line" ;;
    esac
    note "${1:-vswitchd-start}" "uptime $(cat /proc/uptime): $_line"
}

# `dev stat value` for every statistics file of every device in this namespace.
sysfs_stats() {
    for _d in /sys/class/net/*; do
        for _s in "$_d"/statistics/*; do
            echo "${_d##*/} ${_s##*/} $(cat "$_s")"
        done
    done
}

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

# ovs_version: the x.y.z of the guest's Open vSwitch (2.15.0 on bullseye, 3.1.0 on bookworm,
# 3.5.0 on trixie).
ovs_version() { ovs-vswitchd --version | sed -n '1s/.* //p'; }

# ovs_per_cpu_dispatch: whether this OVS has per-CPU upcall dispatch (2.16 and later; it
# uses it when the kernel has it, as 6.1 and 6.12 do).
ovs_per_cpu_dispatch() {
    case $(ovs_version) in
        1.* | 2.[0-9].* | 2.1[0-5].*) return 1 ;;
        *) return 0 ;;
    esac
}

# handler_threads: how many upcall handler threads (`handlerN`) the running ovs-vswitchd has.
handler_threads() {
    _vpid=$(cat /run/openvswitch/ovs-vswitchd.pid 2>/dev/null) || { echo 0; return; }
    cat /proc/"$_vpid"/task/*/comm 2>/dev/null | grep -c '^handler' || true
}
has_handler_threads() { [ "$(handler_threads)" -gt 0 ]; }

# ovs_start_switch [BLOCK]: starts ovs-vswitchd and checks that it runs upcall handler
# threads; block BLOCK (default vswitchd-start) says how it came up.
#   per-CPU dispatch (OVS >= 2.16: bookworm, trixie): started in the first ~10 s of uptime,
#     OVS 3.1 overrides n-handler-threads to 0 and loses every upcall for good, so this
#     waits for uptime 10 s and checks the `Overriding n-handler-threads to N` line.
#   per-vport dispatch (OVS 2.15: bullseye): no such line and no such pitfall; this waits
#     until vswitchd answers on its control socket and has started handler threads (it
#     does once a bridge exists).
ovs_start_switch() {
    _log=/var/log/openvswitch/ovs-vswitchd.log
    if ! ovs_per_cpu_dispatch; then
        ovs-vswitchd unix:/run/openvswitch/db.sock --pidfile --detach --no-chdir --log-file \
            || fatal "ovs-vswitchd did not start"
        wait_for 30 ovs-appctl -t ovs-vswitchd version \
            || fatal "ovs-vswitchd does not answer on its control socket"
        wait_for 30 has_handler_threads \
            || fatal "ovs-vswitchd started no upcall handler threads within 30 s (no bridge?)"
        note "${1:-vswitchd-start}" "uptime $(cat /proc/uptime): OVS $(ovs_version), per-vport upcall dispatch, $(handler_threads) handler threads"
        return 0
    fi
    while [ "$(uptime_s)" -lt 10 ]; do sleep 0.2; done
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

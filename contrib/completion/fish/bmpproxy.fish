# fish completion for bmpproxy.
# Generated from the CLI definitions by `make docs`; do not edit.
# bmpproxy fish shell completion

function __fish_bmpproxy_no_subcommand --description 'Test if there has been any subcommand yet'
    for i in (commandline -opc)
        if contains -- $i check inspect transparent-setup upgrade healthcheck
            return 1
        end
    end
    return 0
end

complete -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -f -l config -s c -r -d 'YAML file with the listeners and settings; of the flags below, only --admin-token-file, --log-level and --log-format may be given with it, and override the file\'s'
complete -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -f -l listen -s l -r -d 'address to accept on; repeat for more. \'[::]:P\' (or \':P\') is dual-stack and accepts IPv4 and IPv6, \'0.0.0.0:P\' is IPv4 only, any other address listens on itself only'
complete -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -f -l target -s t -r -d 'collector address as host:port; a name is resolved again for every connection (required). Repeat it to send every router session to each collector; only the first one\'s replies reach the router'
complete -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -f -l proxy-protocol -r -d 'header sent to each target before any payload: v2, v1, none, or transparent (no header; the target is dialed from the client\'s own address, which needs CAP_NET_ADMIN)'
complete -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -f -l connect-timeout -r -d 'how long to wait for the target to answer before closing the client'
complete -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -f -l bmp -d 'BMP pre-check: refuse a client whose first bytes are not a BMP v3 message, before dialing'
complete -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -f -l resync -d 'keep each router\'s BMP state and replay it to a collector that connects, reconnects or falls behind, so that the router never notices (needs --bmp)'
complete -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -f -l admin-listen -r -d 'address for the HTTP admin listener (/metrics, /routers, /healthz, /readyz, /version, POST /upgrade); none turns it off'
complete -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -f -l admin-token-file -r -d 'file that holds the admin listener\'s token'
complete -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -f -l drain-timeout -r -d 'after SIGINT or SIGTERM, how long open connections may continue before they are closed; 0s closes them at once'
complete -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -f -l log-level -r -d 'one of trace, debug, info, warn, error, disabled'
complete -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -f -l log-format -r -d 'json or console'
complete -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -f -l resync-memory -r -d 'bound on the BMP state that --resync keeps, all routers together (at least 16MiB); past it, the router that passed it is no longer kept, and is disconnected, to resend its state, when a collector needs a replay'
complete -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -f -l splice -d 'move bytes with splice(2); --splice=false copies through user space'
complete -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -f -l max-pipes -r -d 'bound on kernel pipes in use at once (2 fds each); directions beyond it copy through user space'
complete -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -f -l version -d 'print the version and exit'
complete -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -f -l help -s h -d 'show help'
complete -c bmpproxy -n '__fish_seen_subcommand_from check' -f -l help -s h -d 'show help'
complete -r -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -a 'check' -d 'validate a configuration file and print it with every default filled in'
complete -c bmpproxy -n '__fish_seen_subcommand_from check' -f -l config -s c -r -d 'YAML configuration file (required)'
complete -c bmpproxy -n '__fish_seen_subcommand_from inspect' -f -l help -s h -d 'show help'
complete -r -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -a 'inspect' -d 'receive connections and print the PROXY header and BMP messages each one carried'
complete -c bmpproxy -n '__fish_seen_subcommand_from inspect' -f -l listen -s l -r -d 'address to accept on; repeat for more (\'[::]:P\' is dual-stack)'
complete -c bmpproxy -n '__fish_seen_subcommand_from inspect' -f -l json -d 'print one JSON object per connection instead of text'
complete -c bmpproxy -n '__fish_seen_subcommand_from inspect' -f -l header-timeout -r -d 'how long to wait for a PROXY header before treating the stream as having none'
complete -c bmpproxy -n '__fish_seen_subcommand_from inspect' -f -l log-level -r -d 'one of trace, debug, info, warn, error, disabled'
complete -c bmpproxy -n '__fish_seen_subcommand_from inspect' -f -l log-format -r -d 'json or console'
complete -c bmpproxy -n '__fish_seen_subcommand_from transparent-setup' -f -l help -s h -d 'show help'
complete -r -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -a 'transparent-setup' -d 'print, apply or remove the return routing that proxy_protocol: transparent needs'
complete -c bmpproxy -n '__fish_seen_subcommand_from transparent-setup' -f -l case -r -d 'where the collector is: loopback (this host), namespace (another netns routed through this one) or docker (a bridge network)'
complete -c bmpproxy -n '__fish_seen_subcommand_from transparent-setup' -f -l mark -r -d 'the transparent_mark of the listeners; replies are marked mark+1'
complete -c bmpproxy -n '__fish_seen_subcommand_from transparent-setup' -f -l table -r -d 'the routing table that delivers replies locally'
complete -c bmpproxy -n '__fish_seen_subcommand_from transparent-setup' -f -l apply -d 'apply the commands'
complete -c bmpproxy -n '__fish_seen_subcommand_from transparent-setup' -f -l remove -d 'remove what --apply added'
complete -c bmpproxy -n '__fish_seen_subcommand_from upgrade' -f -l help -s h -d 'show help'
complete -r -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -a 'upgrade' -d 'hand a running bmpproxy\'s listeners and open sessions to the binary now at its path'
complete -c bmpproxy -n '__fish_seen_subcommand_from upgrade' -f -l pid -r -d 'process to upgrade'
complete -c bmpproxy -n '__fish_seen_subcommand_from upgrade' -f -l admin -r -d 'admin listener address of the process to upgrade, host:port'
complete -c bmpproxy -n '__fish_seen_subcommand_from upgrade' -f -l token-file -r -d 'with --admin: file (mode 0600) with the bearer token of the process\'s --admin-token-file'
complete -c bmpproxy -n '__fish_seen_subcommand_from upgrade' -f -l timeout -r -d 'how long to wait for the handover'
complete -c bmpproxy -n '__fish_seen_subcommand_from healthcheck' -f -l help -s h -d 'show help'
complete -r -c bmpproxy -n '__fish_bmpproxy_no_subcommand' -a 'healthcheck' -d 'ask a running bmpproxy\'s admin listener for /healthz (for a container HEALTHCHECK)'
complete -c bmpproxy -n '__fish_seen_subcommand_from healthcheck' -f -l url -r -d 'admin URL to GET; use /readyz to also require every listener open'
complete -c bmpproxy -n '__fish_seen_subcommand_from healthcheck' -f -l timeout -r -d 'how long to wait for the answer'

package doctor

import (
	"fmt"
	"strings"
)

// linkPart is a kernel piece the lab's link emulation uses.
type linkPart struct {
	option, module string
}

var (
	partTBF    = linkPart{"CONFIG_NET_SCH_TBF", "sch_tbf"}
	partNetem  = linkPart{"CONFIG_NET_SCH_NETEM", "sch_netem"}
	relayParts = []linkPart{{"CONFIG_PACKET", "af_packet"}, {"CONFIG_NET_SCH_INGRESS", "sch_ingress"}, {"CONFIG_NET_CLS_U32", "cls_u32"}, {"CONFIG_NET_ACT_MIRRED", "act_mirred"}}
)

const linkCheckID = "link emulation"

func (p linkPart) present(env Env, cfg KConfig, rel string) bool {
	if cfg != nil {
		return cfg.Enabled(p.option)
	}
	ok, _, _ := probeModule(p.module)(env, rel)
	return ok
}

// checkLinks says which link emulation `coat lab up --link-*` gets here:
// rate with a TBF qdisc; delay and loss through COAT's userspace relay
// (AF_PACKET, and a u32 filter with a mirred redirect for the way back),
// which the lab uses whether or not the kernel has netem.
func checkLinks(env Env, cfg KConfig, rel string) Result {
	rate := partTBF.present(env, cfg, rel)
	var missing []string
	for _, p := range relayParts {
		if !p.present(env, cfg, rel) {
			missing = append(missing, p.option)
		}
	}
	netem := "no netem"
	if partNetem.present(env, cfg, rel) {
		netem = "netem present, not needed"
	}
	parts := []string{"rate: TBF"}
	if !rate {
		parts[0] = "rate: none (no TBF)"
	}
	if len(missing) == 0 {
		parts = append(parts, "delay and loss: COAT's userspace relay ("+netem+")")
	} else {
		parts = append(parts, "delay and loss: none ("+netem+"; the relay needs "+strings.Join(missing, ", ")+")")
	}
	detail := strings.Join(parts, "; ")
	if cfg == nil {
		detail += " (guessed from the module lists)"
	}
	if rate && len(missing) == 0 {
		return ok(linkCheckID, detail)
	}
	var hint []string
	if !rate {
		hint = append(hint, fmt.Sprintf("`coat lab up --link-rate` needs %s (the tbf qdisc).", partTBF.option))
	}
	if len(missing) > 0 {
		hint = append(hint, fmt.Sprintf("`coat lab up --link-delay/--link-loss` need %s for the relay.", strings.Join(missing, ", ")))
	}
	return warn(linkCheckID, detail, strings.Join(hint, " ")+" Migration itself does not need link emulation.")
}

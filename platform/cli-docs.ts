/**
 * Manual pages and shell completion, made from the same command table as `--help`: a command's
 * usage, summary, description, options and examples are written once (in its `Command`) and
 * rendered here as roff for man(1) and as bash and zsh completion functions. Pure functions:
 * tools/gen-docs.ts writes the files at build time.
 */
import type { Command } from './cli.ts'

export interface ManPage {
  /** Page name, e.g. `unlockd-server`. */
  name: string
  /** Manual section: 1 for user commands, 8 for system administration. */
  section: 1 | 8
  /** One line for NAME: `unlockd-server - ...`. */
  title: string
  /** Paragraphs for DESCRIPTION. */
  description: string[]
  commands: readonly Command[]
  /** Extra sections, in order: heading and paragraphs. */
  sections?: { heading: string; paragraphs: string[] }[]
  seeAlso: string[]
  version: string
  date: string
}

/** Escape text for roff: backslashes, leading dots and quotes, and hyphens in option names. */
function roff(text: string): string {
  return text
    .replace(/\\/g, '\\e')
    .replace(/-/g, '\\-')
    .split('\n')
    .map((l) => (/^[.']/.test(l) ? `\\&${l}` : l))
    .join('\n')
}

function optionLines(cmd: Command): string[] {
  const out: string[] = []
  for (const [name, o] of Object.entries(cmd.options)) {
    const short = o.short === undefined ? '' : `\\fB\\-${o.short}\\fR, `
    const value = o.type === 'string' ? ' \\fIVALUE\\fR' : ''
    out.push('.TP', `${short}\\fB\\-\\-${roff(name)}\\fR${value}`)
    out.push(o.multiple === true ? 'May be given more than once.' : '')
  }
  out.push('.TP', '\\fB\\-\\-json\\fR', 'Machine-readable output.')
  return out.filter((l, i, a) => !(l === '' && a[i - 1]?.startsWith('\\fB')))
}

/** A complete man page in roff (man macros). */
export function manPage(p: ManPage): string {
  const out = [
    `.TH ${p.name.toUpperCase().replace(/-/g, '\\-')} ${p.section} "${p.date}" "unlockd ${p.version}" "unlockd"`,
    // No hyphenation and ragged-right lines: option names and paths stay whole.
    '.nh',
    '.ad l',
    '.SH NAME',
    roff(p.title),
    '.SH SYNOPSIS',
  ]
  for (const c of p.commands) out.push('.PP', `\\fB${roff(c.usage)}\\fR`)
  out.push('.SH DESCRIPTION')
  for (const para of p.description) out.push('.PP', roff(para))
  out.push('.SH COMMANDS')
  for (const c of p.commands) {
    out.push('.SS', `\\fB${roff(c.name)}\\fR`, roff(c.summary))
    if (c.description !== undefined) out.push('.PP', roff(c.description))
    out.push(...optionLines(c))
    if (c.examples?.length) {
      out.push('.PP', 'Examples:', '.RS', '.nf')
      for (const e of c.examples) out.push(roff(e))
      out.push('.fi', '.RE')
    }
  }
  for (const s of p.sections ?? []) {
    out.push(`.SH ${roff(s.heading.toUpperCase())}`)
    for (const para of s.paragraphs) out.push('.PP', roff(para))
  }
  out.push('.SH SEE ALSO', p.seeAlso.map((s) => roff(s)).join(', '))
  return out.join('\n') + '\n'
}

/** Words of a command name and the options it takes (with `--json` and `--help`). */
function table(commands: readonly Command[]): { words: string[]; options: string[] }[] {
  return commands.map((c) => ({
    words: c.name.split(' '),
    options: [...Object.keys(c.options).map((o) => `--${o}`), '--json', '--help'],
  }))
}

function shellWords(list: readonly string[]): string {
  return [...new Set(list)].join(' ')
}

/**
 * A bash completion function for `prog`: the first word completes to a verb, the second to a
 * sub-verb where the verb has them, then options of that command; option values that are
 * files complete to file names.
 */
export function bashCompletion(prog: string, commands: readonly Command[]): string {
  const t = table(commands)
  const first = shellWords(t.map((c) => c.words[0] ?? ''))
  const fn = `_${prog.replace(/[^A-Za-z0-9_]/g, '_')}`
  const cases: string[] = []
  for (const verb of new Set(t.map((c) => c.words[0] ?? ''))) {
    const subs = t.filter((c) => c.words[0] === verb && c.words.length > 1)
    const own = t.find((c) => c.words.length === 1 && c.words[0] === verb)
    if (subs.length > 0) {
      const subCases = subs
        .map((s) => `        ${s.words[1]}) opts=${JSON.stringify(shellWords(s.options))} ;;`)
        .join('\n')
      cases.push(
        `    ${verb})`,
        `      if [[ $COMP_CWORD -eq 2 ]]; then`,
        `        COMPREPLY=($(compgen -W ${JSON.stringify(shellWords([...subs.map((s) => s.words[1] ?? ''), ...(own?.options ?? [])]))} -- "$cur"))`,
        `        return`,
        `      fi`,
        `      case "\${COMP_WORDS[2]}" in`,
        subCases,
        `      esac`,
        ...(own ? [`      [[ -n $opts ]] || opts=${JSON.stringify(shellWords(own.options))}`] : []),
        `      ;;`,
      )
    } else if (own) {
      cases.push(`    ${verb}) opts=${JSON.stringify(shellWords(own.options))} ;;`)
    }
  }
  return `# bash completion for ${prog}, generated from its command table.
${fn}() {
  local cur prev opts=""
  cur="\${COMP_WORDS[COMP_CWORD]}"
  prev="\${COMP_WORDS[COMP_CWORD-1]}"
  if [[ $COMP_CWORD -eq 1 ]]; then
    COMPREPLY=($(compgen -W ${JSON.stringify(`${first} help --version`)} -- "$cur"))
    return
  fi
  case "$prev" in
    --*-file|--out|--config|--data|--ca|--tls-cert|--tls-key|--blob|--bundle|--node|--crypttab|--fstab)
      COMPREPLY=($(compgen -f -- "$cur"))
      return
      ;;
  esac
  case "\${COMP_WORDS[1]}" in
${cases.join('\n')}
  esac
  COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}
complete -F ${fn} ${prog}
`
}

/** A zsh completion function (`#compdef prog`) with the same table as the bash one. */
export function zshCompletion(prog: string, commands: readonly Command[]): string {
  const t = table(commands)
  const verbs = [...new Set(t.map((c) => c.words[0] ?? ''))]
  const summary = (name: string): string =>
    (commands.find((c) => c.name === name)?.summary ?? '').replace(/['[\]:]/g, ' ')
  const describe = (w: string): string => {
    const own = commands.find((c) => c.name === w)
    return `'${w}:${own ? summary(w) : `${w} commands`}'`
  }
  const cases: string[] = []
  for (const verb of verbs) {
    const subs = t.filter((c) => c.words[0] === verb && c.words.length > 1)
    const own = t.find((c) => c.words.length === 1 && c.words[0] === verb)
    if (subs.length > 0) {
      cases.push(
        `    ${verb})`,
        `      if (( CURRENT == 3 )); then`,
        `        local -a subs=(${subs.map((s) => `'${s.words[1]}:${summary(s.words.join(' '))}'`).join(' ')})`,
        `        _describe 'subcommand' subs`,
        `        return`,
        `      fi`,
        `      case $words[3] in`,
        ...subs.map((s) => `        ${s.words[1]}) opts=(${s.options.join(' ')}) ;;`),
        `      esac`,
        ...(own ? [`      (( $#opts )) || opts=(${own.options.join(' ')})`] : []),
        `      ;;`,
      )
    } else if (own) {
      cases.push(`    ${verb}) opts=(${own.options.join(' ')}) ;;`)
    }
  }
  return `#compdef ${prog}
# zsh completion for ${prog}, generated from its command table.
_${prog.replace(/[^A-Za-z0-9_]/g, '_')}() {
  local -a opts
  if (( CURRENT == 2 )); then
    local -a verbs=(${verbs.map(describe).join(' ')})
    _describe 'command' verbs
    return
  fi
  case $words[2] in
${cases.join('\n')}
  esac
  if [[ $PREFIX == -* ]]; then
    compadd -- $opts
  else
    _files
  fi
}
_${prog.replace(/[^A-Za-z0-9_]/g, '_')} "$@"
`
}

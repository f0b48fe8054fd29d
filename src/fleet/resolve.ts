/**
 * Resolution: which profiles apply to an appliance, and the value of each
 * variable they set — the highest priority wins; two profiles of equal (top)
 * priority that set one variable to different values are a conflict.
 * Members of one HA cluster are resolved together, so they always receive the
 * same configuration.
 */
import { canonicalValue, VARIABLES } from '../config/variables.js';
import { InvalidValueError } from '../errors.js';
import { type ApplianceDoc, type ProfileDoc, applianceTags } from './keys.js';

export interface Resolution {
  /** Variable → value, only for the variables some profile sets (table order). */
  readonly values: Record<string, string>;
  /** Profiles that apply, highest priority first (then by name). */
  readonly profiles: string[];
  /** One line per conflicting variable; empty when the resolution is good. */
  readonly conflicts: string[];
}

/** The appliances resolved together with `a`: its cluster's members, or itself. */
export function membersOf(a: ApplianceDoc, all: Iterable<ApplianceDoc>): ApplianceDoc[] {
  if (!a.cluster) return [a];
  return [...all].filter((m) => m.cluster === a.cluster).sort((x, y) => x.id.localeCompare(y.id));
}

/** Whether the profile names one of the appliances or shares one of their tags. */
export function applies(p: ProfileDoc, members: readonly ApplianceDoc[]): boolean {
  return members.some((m) => p.appliances.includes(m.id) || applianceTags(m).some((t) => p.tags.includes(t)));
}

/** The value as compared: canonical when valid, the text as it is otherwise (the agent refuses it). */
function comparable(name: string, value: string): string {
  try {
    return canonicalValue('resolve', name, value);
  } catch (err) {
    if (err instanceof InvalidValueError) return value;
    throw err;
  }
}

const ORDER = new Map(VARIABLES.map((v, i) => [v.name, i]));

export function resolveFor(a: ApplianceDoc, appliances: Iterable<ApplianceDoc>, profiles: Iterable<ProfileDoc>): Resolution {
  const members = membersOf(a, appliances);
  const mine = [...profiles].filter((p) => applies(p, members)).sort((x, y) => y.priority - x.priority || x.name.localeCompare(y.name));
  const values: Record<string, string> = {};
  const conflicts: string[] = [];
  const names = [...new Set(mine.flatMap((p) => Object.keys(p.values)))].sort((x, y) => (ORDER.get(x) ?? Infinity) - (ORDER.get(y) ?? Infinity) || x.localeCompare(y));
  for (const name of names) {
    const setters = mine.filter((p) => p.values[name] !== undefined);
    const top = setters[0]!;
    const rivals = setters.filter((p) => p.priority === top.priority && comparable(name, p.values[name]!) !== comparable(name, top.values[name]!));
    if (rivals.length) {
      const r = rivals[0]!;
      conflicts.push(`conflict: ${name} is ${top.values[name]} in profile ${top.name} and ${r.values[name]} in profile ${r.name}, both priority ${top.priority}`);
      continue;
    }
    values[name] = comparable(name, top.values[name]!);
  }
  return { values, profiles: mine.map((p) => p.name), conflicts };
}

/** A stable fingerprint of a set of values (equal values, equal text). */
export function fingerprint(values: Readonly<Record<string, string>>): string {
  return JSON.stringify(Object.keys(values).sort().map((k) => [k, values[k]]));
}

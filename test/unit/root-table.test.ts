/** The partition table edit of a root conversion, as sfdisk dump text. */
import test from 'ava'
import { carvedTable, samePartitions } from '../../agent/encrypt/root-table.ts'
import type { Geometry } from '../../agent/encrypt/root-plan.ts'

const MBR = `label: dos
label-id: 0x8c6a2b1e
device: /dev/sda
unit: sectors
sector-size: 512

/dev/sda1 : start=        2048, size=    83884032, type=83, bootable
`

const geometry = (over: Partial<Geometry> = {}): Geometry => ({
  disk: '/dev/sda',
  pttype: 'dos',
  sectorBytes: 512,
  rootPartition: '/dev/sda1',
  rootPartn: 1,
  rootStart: 2048,
  rootSectorsBefore: 83884032,
  rootSectorsAfter: 82835456,
  fsBytesAfter: 42_377_000_960,
  boot: { partn: 2, start: 82837504, sectors: 1048576, parttype: '83' },
  ...over,
})

test('MBR: root keeps its start and flags, the new primary partition takes the tail', (t) => {
  const next = carvedTable(MBR, geometry(), '/dev/sda', null)
  t.regex(next, /^label-id: 0x8c6a2b1e$/m)
  t.regex(next, /^\/dev\/sda1 : start=2048, size=82835456, type=83, bootable$/m)
  t.regex(next, /^\/dev\/sda2 : start=82837504, size=1048576, type=83$/m)
  t.false(samePartitions(next, MBR))
  t.true(samePartitions(next, next.replace(/\/dev\/sda/g, '/dev/vda')))
})

test('a table that is not the planned one is refused', (t) => {
  t.throws(() => carvedTable(MBR, geometry({ rootStart: 4096 }), '/dev/sda', null), {
    message: /not 4096\+83884032 as planned/,
  })
  const withTwo = `${MBR}/dev/sda2 : start=1, size=1, type=83\n`
  t.throws(() => carvedTable(withTwo, geometry(), '/dev/sda', null), { message: /exists already/ })
  t.throws(() => carvedTable(MBR, geometry({ boot: null }), '/dev/sda', null))
})

test('nvme disks name partitions with a p', (t) => {
  const dump = MBR.replace(/\/dev\/sda1/, '/dev/nvme0n1p1')
  const next = carvedTable(dump, geometry(), '/dev/nvme0n1', null)
  t.regex(next, /^\/dev\/nvme0n1p2 : /m)
})

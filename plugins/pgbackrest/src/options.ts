/** Options of the pgbackrest stage. (Being built.) */
import { z } from '@backup-pipeline/core';

export const optionsSchema = z.object({}).strict();

export type PgbackrestOptions = z.output<typeof optionsSchema>;
